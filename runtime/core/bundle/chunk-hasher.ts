/**
 * sha256 of chunk buffers on a worker thread, so the thread that pumps the payload does not hash.
 * The buffers live in SharedArrayBuffers (see ChunkPool): the worker reads them in place, nothing
 * is copied or transferred. The worker's code is a plain-JavaScript string: it must survive
 * bundling into the image's single agent file.
 */
import { createHash } from 'node:crypto';
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

  /**
   * The sha256 (hex) of the first `length` bytes of `buffer`, which must be on a SharedArrayBuffer
   * and stay unchanged until this settles. Until the worker has booted, the calling thread hashes:
   * the first chunks of an install would otherwise wait for the boot (a 4 MiB chunk takes about
   * 3 ms to hash, the boot 30 ms or more).
   */
  digest(buffer: Buffer, length: number): Promise<string> {
    if (!(buffer.buffer instanceof SharedArrayBuffer)) return Promise.reject(new Error('ChunkHasher needs a buffer on a SharedArrayBuffer'));
    if (!this.worker.online) return Promise.resolve(createHash('sha256').update(buffer.subarray(0, length)).digest('hex'));
    return this.worker.send({ memory: buffer.buffer, offset: buffer.byteOffset, length }) as Promise<string>;
  }

  /** Settles once the worker booted (or failed to): digests after it are the worker's. */
  get booted(): Promise<void> {
    return this.worker.booted;
  }

  async close(): Promise<void> {
    await this.worker.terminate();
  }
}
