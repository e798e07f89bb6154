/**
 * sha256 of chunk buffers on a worker thread, so the thread that pumps the payload does not hash.
 * The buffers live in SharedArrayBuffers (see ChunkPool): the worker reads them in place, nothing
 * is copied or transferred. The worker's code is a plain-JavaScript string: it must survive
 * bundling into the image's single agent file.
 */
import { Worker } from 'node:worker_threads';

const workerSource = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, memory, length }) => {
  parentPort.postMessage({ id, digest: createHash('sha256').update(new Uint8Array(memory, 0, length)).digest('hex') });
});
`;

interface Pending {
  resolve: (digest: string) => void;
  reject: (error: Error) => void;
}

export class ChunkHasher {
  private readonly worker = new Worker(workerSource, { eval: true });
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private failure: Error | undefined;

  constructor() {
    this.worker.unref();
    this.worker.on('message', ({ id, digest }: { id: number; digest: string }) => {
      const waiter = this.pending.get(id);
      this.pending.delete(id);
      waiter?.resolve(digest);
    });
    const fail = (error: Error) => {
      this.failure ??= error;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', () => fail(new Error('the hashing worker exited')));
  }

  /** The sha256 (hex) of the first `length` bytes of `buffer`, which must be on a SharedArrayBuffer and stay unchanged until this settles. */
  digest(buffer: Buffer, length: number): Promise<string> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    if (!(buffer.buffer instanceof SharedArrayBuffer) || buffer.byteOffset !== 0) return Promise.reject(new Error('ChunkHasher needs a buffer at the start of a SharedArrayBuffer'));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, memory: buffer.buffer, length });
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
