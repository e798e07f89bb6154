/**
 * A bounded set of reusable chunk buffers, handed from the payload verifier to the slot writer and
 * back. Reusing them keeps a gigabyte from being allocated (and page-faulted in) 4 MiB at a time,
 * and the bound is the install's memory budget: when every buffer is out, input waits.
 */
export class ChunkPool {
  private readonly free: Buffer[] = [];
  private made = 0;
  private size: number | undefined;
  private waiting: (() => void)[] = [];

  /** `maxBytes`: the most the buffers may hold together (at least two buffers are allowed). */
  constructor(readonly maxBytes: number) {}

  /**
   * A buffer of `chunkSize` bytes on a SharedArrayBuffer of its own, or undefined while all are
   * out (see whenFree). One size per pool.
   */
  take(chunkSize: number): Buffer | undefined {
    if (this.size !== undefined && this.size !== chunkSize) throw new Error(`chunk pool of ${this.size}-byte buffers asked for ${chunkSize} bytes`);
    this.size = chunkSize;
    const buffer = this.free.pop();
    if (buffer !== undefined) return buffer;
    if (this.made >= Math.max(2, Math.floor(this.maxBytes / chunkSize))) return undefined;
    this.made += 1;
    // shared memory: a worker can hash it in place, with no transfer and no copy
    return Buffer.from(new SharedArrayBuffer(chunkSize));
  }

  /** Gives back a buffer from take(), or a view that starts at its first byte. */
  give(chunk: Buffer): void {
    if (chunk.byteOffset !== 0 || chunk.buffer.byteLength !== this.size) {
      throw new Error('a buffer given back to the chunk pool did not come from it');
    }
    this.free.push(chunk.length === this.size ? chunk : Buffer.from(chunk.buffer, 0, this.size));
    const waiters = this.waiting;
    this.waiting = [];
    for (const wake of waiters) wake();
  }

  /** Calls back once, when a buffer comes back. */
  whenFree(callback: () => void): void {
    this.waiting.push(callback);
  }
}
