/**
 * sha256 of chunk buffers on a worker thread, so the thread that pumps the payload only copies
 * bytes. Each buffer's memory is transferred to the worker and back, never copied. The worker's
 * code is a plain-JavaScript string: it must survive bundling into the image's single agent file.
 */
import { Worker } from 'node:worker_threads';

const workerSource = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, memory, length }) => {
  const digest = createHash('sha256').update(new Uint8Array(memory, 0, length)).digest('hex');
  parentPort.postMessage({ id, memory, digest }, [memory]);
});
`;

interface Pending {
  resolve: (result: { digest: string; buffer: Buffer }) => void;
  reject: (error: Error) => void;
}

export class ChunkHasher {
  private readonly worker = new Worker(workerSource, { eval: true });
  private readonly pending = new Map<number, Pending>();
  private nextId = 0;
  private failure: Error | undefined;

  constructor() {
    this.worker.unref();
    this.worker.on('message', ({ id, memory, digest }: { id: number; memory: ArrayBuffer; digest: string }) => {
      const waiter = this.pending.get(id);
      this.pending.delete(id);
      waiter?.resolve({ digest, buffer: Buffer.from(memory) });
    });
    const fail = (error: Error) => {
      this.failure ??= error;
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    this.worker.on('error', fail);
    this.worker.on('exit', () => fail(new Error('the hashing worker exited')));
  }

  /**
   * The sha256 (hex) of the first `length` bytes of `buffer`, which must own its whole
   * ArrayBuffer: it is unusable until the promise gives it back (as a new Buffer on the same memory).
   */
  digest(buffer: Buffer, length: number): Promise<{ digest: string; buffer: Buffer }> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    const id = this.nextId++;
    const memory = buffer.buffer as ArrayBuffer;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.worker.postMessage({ id, memory, length }, [memory]);
    });
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
