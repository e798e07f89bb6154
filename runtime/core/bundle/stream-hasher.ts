/**
 * Running sha256s on a worker thread, fed in order with ranges of shared memory, and a
 * pass-through stream that feeds one. They take a whole hash of a stream (the bundle file,
 * the compressed payload, the image) off the thread that pumps the bytes, beside the per-chunk
 * hashes of ChunkHasher on another worker: on two cores, four hashes of a bundle no longer queue
 * behind each other on one thread. The worker's code is a plain-JavaScript string, like the chunk
 * hasher's, so it survives bundling into the agent's single file.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { HashWorker } from './hash-worker.js';

const workerSource = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hashes = new Map();
parentPort.on('message', ({ id, stream, memory, offset, length, end }) => {
  let hash = hashes.get(stream);
  if (hash === undefined) hashes.set(stream, (hash = createHash('sha256')));
  if (end) {
    hashes.delete(stream);
    parentPort.postMessage({ id, digest: hash.digest('hex') });
  } else {
    hash.update(new Uint8Array(memory, offset, length));
    parentPort.postMessage({ id });
  }
});
`;

/**
 * The worker every StreamHasher of this process shares while any is open: a verify runs three
 * whole-stream hashes at once, and a worker apiece cost some 15 MiB of RSS each for no speed on
 * two cores (the chunk hashes have a worker of their own).
 */
class SharedHashWorker extends HashWorker {
  users = 0;
}

let shared: SharedHashWorker | undefined;
let nextStream = 0;

export class StreamHasher {
  private readonly worker: SharedHashWorker;
  private readonly stream = nextStream++;
  private closed = false;

  constructor() {
    shared ??= new SharedHashWorker(workerSource);
    this.worker = shared;
    this.worker.users += 1;
  }

  /**
   * Hashes `length` bytes of `buffer` (on a SharedArrayBuffer) after everything given before;
   * resolves once they were read, so the memory may be reused.
   */
  update(buffer: Buffer, length: number = buffer.length): Promise<void> {
    if (!(buffer.buffer instanceof SharedArrayBuffer)) return Promise.reject(new Error('StreamHasher needs a buffer on a SharedArrayBuffer'));
    return this.worker.send({ stream: this.stream, memory: buffer.buffer, offset: buffer.byteOffset, length }).then(() => undefined);
  }

  /** The sha256 (hex) of everything given; once. */
  async digest(): Promise<string> {
    return (await this.worker.send({ stream: this.stream, end: true }))!;
  }

  /** Done with it (the last one open stops the worker). Unfinished hashes are dropped. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.worker.users -= 1;
    if (this.worker.users > 0) return;
    if (shared === this.worker) shared = undefined;
    await this.worker.terminate();
  }
}

/** Copies per message: small enough to stay in cache, big enough that messages cost nothing. */
const slotBytes = 1 << 20;
const slotCount = 4;

/**
 * HashTap's job (count, hash, pass through) with the hashing on a StreamHasher: what flows by is
 * copied into a few slots of shared memory and hashed there while the bytes go on. Input waits only
 * when every slot is still being hashed. The worker ends with the stream (or when it is destroyed).
 */
export class OffThreadHashTap extends Transform {
  bytes = 0;
  private readonly hasher = new StreamHasher();
  private readonly free: Buffer[] = [];
  private current: Buffer | undefined;
  private filled = 0;
  private inFlight: Promise<void>[] = [];
  private failure: unknown;
  private result: Promise<string> | undefined;

  constructor(private readonly onBytes?: (bytes: number) => void) {
    super({ highWaterMark: 1 << 20 });
    const memory = new SharedArrayBuffer(slotBytes * slotCount);
    for (let i = 0; i < slotCount; i++) this.free.push(Buffer.from(memory, i * slotBytes, slotBytes));
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    this.onBytes?.(this.bytes);
    this.copy(chunk).then(() => callback(null, chunk), (error: unknown) => callback(error as Error));
  }

  override _flush(callback: TransformCallback): void {
    if (this.current !== undefined && this.filled > 0) this.post();
    // the digest is asked for now and awaited by digest(): the stream ends without waiting for it
    this.result = Promise.all(this.inFlight).then(() => this.hasher.digest());
    this.result.catch(() => {}).finally(() => void this.hasher.close());
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.result === undefined) void this.hasher.close();
    callback(error);
  }

  /** The sha256 (hex) of everything seen; once the stream has ended. */
  digest(): Promise<string> {
    if (this.result === undefined) return Promise.reject(new Error('OffThreadHashTap.digest before the stream ended'));
    return this.result;
  }

  private async copy(chunk: Buffer): Promise<void> {
    let offset = 0;
    while (offset < chunk.length) {
      if (this.failure !== undefined) throw this.failure;
      if (this.current === undefined) {
        while (this.free.length === 0) await this.inFlight[0];
        this.current = this.free.pop()!;
        this.filled = 0;
      }
      const take = Math.min(slotBytes - this.filled, chunk.length - offset);
      chunk.copy(this.current, this.filled, offset, offset + take);
      this.filled += take;
      offset += take;
      if (this.filled === slotBytes) this.post();
    }
  }

  private post(): void {
    const slot = this.current!;
    const hashed = this.hasher.update(slot, this.filled);
    this.current = undefined;
    this.filled = 0;
    const done: Promise<void> = hashed.then(
      () => {
        this.inFlight.splice(this.inFlight.indexOf(done), 1);
        this.free.push(slot);
      },
      (error: unknown) => {
        this.failure ??= error;
        throw error;
      },
    );
    done.catch(() => {});
    this.inFlight.push(done);
  }
}
