/**
 * Writes a bundle's chunk index object into a chunk store folder as the store holds any chunk:
 * `<dir>/<sha256>.zst`, one zstd frame at the chunk store's level, named by the sha256 of the
 * encoded (uncompressed) index. It is compressed in a scratch folder and renamed into place, so a
 * killed run never leaves a partial object under its name. One already there is not written again.
 */
import { access, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../runtime/core/exec.js';
import { chunkZstdLevel } from './write-chunk-files.js';

export interface WrittenIndexObject {
  sha256: string;
  /** Bytes of the encoded index, uncompressed. */
  size: number;
  /** False when the store held it already (a file there, or `skip` says so). */
  written: boolean;
  /** Bytes of its zstd frame, when written now. */
  compressedBytes: number;
}

export async function writeIndexObject(dir: string, bytes: Buffer, sha256: string, options: { skip?: (sha256: string) => boolean; signal?: AbortSignal | undefined } = {}): Promise<WrittenIndexObject> {
  const target = join(dir, `${sha256}.zst`);
  const result = { sha256, size: bytes.length, written: false, compressedBytes: 0 };
  if (options.skip?.(sha256) === true || (await access(target).then(() => true, () => false))) return result;
  await mkdir(dir, { recursive: true });
  const scratch = join(dir, `.partial-index-${process.pid}`);
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch);
  try {
    await writeFile(join(scratch, sha256), bytes);
    await run('zstd', [`-${chunkZstdLevel}`, '-q', '-f', '--rm', '--no-progress', join(scratch, sha256)], { signal: options.signal, timeoutMs: 10 * 60_000 });
    const compressedBytes = (await stat(join(scratch, `${sha256}.zst`))).size;
    await rename(join(scratch, `${sha256}.zst`), target);
    return { ...result, written: true, compressedBytes };
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
