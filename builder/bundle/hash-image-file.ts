/**
 * The manifest's hashes of an image (sha256 per chunk and of the whole), computed on a worker
 * thread that reads the file itself: the thread that feeds zstd and writes the bundle does not
 * hash the uncompressed gigabyte twice. The worker's code is a plain-JavaScript string, like the
 * agent's chunk hasher (runtime/core/bundle/chunk-hasher.ts).
 */
import { open } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { KubeosError } from '../../runtime/core/errors.js';

const workerSource = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const { readSync } = require('node:fs');
// the descriptor belongs to the parent, which closes it however the worker ends
const { fd, chunkSize } = workerData;
{
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
}
`;

export interface ImageHashes {
  bytes: number;
  /** sha256 (hex) of each `chunkSize` chunk, the last one shorter. */
  chunks: string[];
  sha256: string;
}

export async function hashImageFile(path: string, chunkSize: number, options: { signal?: AbortSignal | undefined; onBytes?: (bytes: number) => void } = {}): Promise<ImageHashes> {
  let file;
  try {
    file = await open(path, 'r');
  } catch (error) {
    throw new KubeosError('E_USAGE', `cannot read rootfs ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error, details: { path } });
  }
  const worker = new Worker(workerSource, { eval: true, workerData: { fd: file.fd, chunkSize } });
  try {
    return await new Promise<ImageHashes>((resolve, reject) => {
      const abort = () => reject(options.signal?.reason);
      if (options.signal?.aborted) abort();
      options.signal?.addEventListener('abort', abort, { once: true });
      const settle = (fn: () => void) => {
        options.signal?.removeEventListener('abort', abort);
        fn();
      };
      worker.on('message', (message: { progress?: number; done?: ImageHashes }) => {
        if (message.progress !== undefined) options.onBytes?.(message.progress);
        const done = message.done;
        if (done !== undefined) settle(() => resolve(done));
      });
      worker.on('error', (error) => settle(() => reject(new KubeosError('E_USAGE', `cannot read rootfs ${path}: ${(error as NodeJS.ErrnoException).code ?? error.message}`, { cause: error, details: { path } }))));
      worker.on('exit', () => settle(() => reject(new KubeosError('E_OUTPUT', `the worker hashing ${path} exited before it finished`))));
    });
  } finally {
    // the worker is done or stopped before its descriptor is closed under it
    await worker.terminate();
    await file.close();
  }
}
