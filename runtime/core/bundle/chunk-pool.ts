/**
 * A bounded set of reusable chunk buffers, handed from the payload verifier to the slot writer and
 * back. Reusing them keeps a gigabyte from being allocated (and page-faulted in) 4 MiB at a time,
 * and the bound is the install's memory budget: when every buffer is out, input waits.
 *
 * The buffers are views of one block of shared memory (a worker hashes them in place, with no
 * transfer and no copy). The block is a shared WebAssembly.Memory where the runtime allows one:
 * its base is page-aligned, so buffers whose size is a multiple of 4 KiB can be written with
 * O_DIRECT, which Node's own allocations (aligned to 16 bytes) cannot. `aligned()` says which are.
 */

/** A WebAssembly page, the unit a WebAssembly.Memory grows by. */
const wasmPage = 64 * 1024;
/** What O_DIRECT asks of memory on 4 KiB-sector disks (512-byte ones take it too). */
export const directAlignment = 4096;

export class ChunkPool {
  private readonly free: Buffer[] = [];
  private made = 0;
  private size: number | undefined;
  private memory: SharedArrayBuffer | undefined;
  private pageAligned = false;
  private waiting: (() => void)[] = [];

  /** `maxBytes`: the most the buffers may hold together (at least two buffers are allowed). */
  constructor(readonly maxBytes: number) {}

  private get capacity(): number {
    return Math.max(2, Math.floor(this.maxBytes / this.size!));
  }

  /** The shared block for every buffer, page-aligned when WebAssembly.Memory can be had. */
  private allocate(chunkSize: number): SharedArrayBuffer {
    const bytes = this.capacity * chunkSize;
    const pages = Math.ceil(bytes / wasmPage);
    try {
      // a shared memory's buffer is a SharedArrayBuffer (typed as ArrayBuffer by the DOM library)
      const buffer: ArrayBufferLike = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true }).buffer;
      if (buffer instanceof SharedArrayBuffer) {
        this.pageAligned = true;
        return buffer;
      }
    } catch {
      // no room for another WebAssembly reservation (address-space limits): below
    }
    // memory aligned to 16 bytes only, which the slot writer writes through the page cache
    return new SharedArrayBuffer(bytes);
  }

  /** A buffer of `chunkSize` bytes, or undefined while all are out (see whenFree). One size per pool. */
  take(chunkSize: number): Buffer | undefined {
    if (this.size !== undefined && this.size !== chunkSize) throw new Error(`chunk pool of ${this.size}-byte buffers asked for ${chunkSize} bytes`);
    this.size = chunkSize;
    const buffer = this.free.pop();
    if (buffer !== undefined) return buffer;
    if (this.made >= this.capacity) return undefined;
    this.memory ??= this.allocate(chunkSize);
    const view = Buffer.from(this.memory, this.made * chunkSize, chunkSize);
    this.made += 1;
    return view;
  }

  /** Gives back a buffer from take(), or a view that starts at its first byte. */
  give(chunk: Buffer): void {
    const size = this.size;
    if (size === undefined || chunk.buffer !== this.memory || chunk.byteOffset % size !== 0 || chunk.length > size) {
      throw new Error('a buffer given back to the chunk pool did not come from it');
    }
    this.free.push(chunk.length === size ? chunk : Buffer.from(this.memory, chunk.byteOffset, size));
    const waiters = this.waiting;
    this.waiting = [];
    for (const wake of waiters) wake();
  }

  /**
   * True when `chunk` is one of this pool's buffers (or a view from its first byte) that sits at a
   * 4 KiB-aligned address, so it may be written with O_DIRECT when its length allows.
   */
  aligned(chunk: Buffer): boolean {
    return this.pageAligned && chunk.buffer === this.memory && chunk.byteOffset % directAlignment === 0;
  }

  /** Calls back once, when a buffer comes back. */
  whenFree(callback: () => void): void {
    this.waiting.push(callback);
  }
}
