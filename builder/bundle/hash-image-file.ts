/**
 * The manifest's hashes of an image (sha256 per chunk and of the whole), computed on a worker
 * thread that reads the file itself: the thread that feeds zstd and writes the bundle does not
 * hash the uncompressed gigabyte twice. The worker's code is a plain-JavaScript string, like the
 * agent's chunk hasher (runtime/core/bundle/chunk-hasher.ts).
 */
import { Worker } from 'node:worker_threads';
import { KubeosError } from '../../runtime/core/errors.js';

const workerSource = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { openSync, readSync, closeSync } = require('node:fs');
const { path, chunkSize } = workerData;
const fd = openSync(path, 'r');
try {
  const whole = createHash('sha256');
  const chunks = [];
  const buffer = Buffer.allocUnsafe(chunkSize);
  let bytes = 0;
  let reported = 0;
  for (;;) {
    let filled = 0;
    while (filled < chunkSize) {
      const n = readSync(fd, buffer, filled, chunkSize - filled, bytes + filled);
      if (n === 0) break;
      filled += n;
    }
    if (filled === 0) break;
    const chunk = buffer.subarray(0, filled);
    whole.update(chunk);
    chunks.push(createHash('sha256').update(chunk).digest('hex'));
    bytes += filled;
    if (bytes - reported >= 32 * 1024 * 1024) {
      reported = bytes;
      parentPort.postMessage({ progress: bytes });
    }
    if (filled < chunkSize) break;
  }
  parentPort.postMessage({ done: { bytes, chunks, sha256: whole.digest('hex') } });
} finally {
  closeSync(fd);
}
`;

export interface ImageHashes {
  bytes: number;
  /** sha256 (hex) of each `chunkSize` chunk, the last one shorter. */
  chunks: string[];
  sha256: string;
}

export function hashImageFile(path: string, chunkSize: number, options: { signal?: AbortSignal | undefined; onBytes?: (bytes: number) => void } = {}): Promise<ImageHashes> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(workerSource, { eval: true, workerData: { path, chunkSize } });
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      options.signal?.removeEventListener('abort', abort);
      fn();
    };
    const abort = () => {
      void worker.terminate();
      finish(() => reject(options.signal?.reason));
    };
    options.signal?.addEventListener('abort', abort, { once: true });
    worker.on('message', (message: { progress?: number; done?: ImageHashes }) => {
      if (message.progress !== undefined) options.onBytes?.(message.progress);
      if (message.done !== undefined) {
        const done = message.done;
        finish(() => resolve(done));
      }
    });
    worker.on('error', (error) => finish(() => reject(new KubeosError('E_USAGE', `cannot read rootfs ${path}: ${(error as NodeJS.ErrnoException).code ?? error.message}`, { cause: error, details: { path } }))));
    worker.on('exit', () => finish(() => reject(new KubeosError('E_OUTPUT', `the worker hashing ${path} exited before it finished`))));
  });
}
