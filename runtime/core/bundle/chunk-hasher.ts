/**
 * sha256 of chunk buffers on a worker thread, so the thread that pumps the payload does not hash.
 * The buffers live in SharedArrayBuffers (see ChunkPool): the worker reads them in place, nothing
 * is copied or transferred. The worker's code is a plain-JavaScript string: it must survive
 * bundling into the image's single agent file.
 */
import { HashWorker } from './hash-worker.js';

const workerSource = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
parentPort.on('message', ({ id, memory, offset, length }) => {
  parentPort.postMessage({ id, digest: createHash('sha256').update(new Uint8Array(memory, offset, length)).digest('hex') });
});
`;

export class ChunkHasher {
  private readonly worker = new HashWorker(workerSource);

  /** The sha256 (hex) of the first `length` bytes of `buffer`, which must be on a SharedArrayBuffer and stay unchanged until this settles. */
  digest(buffer: Buffer, length: number): Promise<string> {
    if (!(buffer.buffer instanceof SharedArrayBuffer)) return Promise.reject(new Error('ChunkHasher needs a buffer on a SharedArrayBuffer'));
    return this.worker.send({ memory: buffer.buffer, offset: buffer.byteOffset, length }) as Promise<string>;
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
