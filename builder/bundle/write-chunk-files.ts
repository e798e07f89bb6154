/**
 * Writes the chunk store of a format 2 bundle: each chunk of the signed index as its own zstd
 * frame, `<dir>/<sha256>.zst`, named by the sha256 of its uncompressed bytes. The image streams
 * through once and is cut by the index's lengths; each chunk is checked against the index before
 * it is stored (the image changed since it was indexed: E_HASH_MISMATCH). A chunk already in the
 * store (a file there, or `skip` says so) is not written again.
 *
 * zstd runs once per batch of files, not once per chunk, one batch per core at a time, at level
 * chunkZstdLevel; it compresses into a scratch folder and
 * each finished frame is renamed into place, so a killed run never leaves a partial chunk file
 * under a chunk's name.
 */
import { createHash } from 'node:crypto';
import { access, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { ChunkIndexInfo } from '../../runtime/core/bundle/manifest.js';
import { KubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';

export interface WrittenChunks {
  /** sha256 of each chunk written now, in image order. */
  written: string[];
  /** Distinct chunks that were already stored (or repeated within the image). */
  skipped: number;
  /** Compressed bytes of the chunks written now. */
  compressedBytes: number;
}

export interface WriteChunkOptions {
  /** True when the chunk is stored elsewhere already (a bucket), so it need not be written. */
  skip?: (sha256: string) => boolean;
  signal?: AbortSignal | undefined;
}

const batchFiles = 256;
const lanes = Math.max(1, availableParallelism());

/**
 * Chunks are compressed once per release and fetched by every host: a higher level than the
 * bundle's pays. Measured on the chunks of images/debian (262 MiB, every other distinct chunk):
 * -3 94.0 MB, -6 89.1, -9 88.1, -12 87.9, -15 82.9, -19 82.1; -9 took 3.4x the time of -3 and
 * -19 32x. -9 takes the debian delta under casync's bytes (docs/deltas.md).
 */
export const chunkZstdLevel = 9;

/**
 * `index.chunks` may still grow while `image` streams: write-bundle-chunks.ts cuts the index of an
 * index-object bundle in the same pass and appends each chunk before its bytes arrive here. So an
 * entry is read only once bytes of its chunk have come (test/bundle/format-2.test.ts holds to it).
 */
export async function writeChunkFiles(image: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, index: ChunkIndexInfo, dir: string, options: WriteChunkOptions = {}): Promise<WrittenChunks> {
  await mkdir(dir, { recursive: true });
  const scratch = join(dir, `.partial-${process.pid}`);
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch);
  const written: string[] = [];
  const seen = new Set<string>();
  let skipped = 0;
  let compressedBytes = 0;
  let batch: string[] = [];
  // one zstd per core, each on its own batch, while the image streams on
  const running = new Set<Promise<void>>();
  let failure: unknown;
  const compress = async (names: string[]) => {
    await run('zstd', [`-${chunkZstdLevel}`, '-q', '-f', '--rm', '--no-progress', ...names.map((n) => join(scratch, n))], { signal: options.signal, timeoutMs: 10 * 60_000 });
    for (const name of names) {
      compressedBytes += (await stat(join(scratch, `${name}.zst`))).size;
      await rename(join(scratch, `${name}.zst`), join(dir, `${name}.zst`));
    }
  };
  const flush = async () => {
    if (batch.length > 0) {
      const job: Promise<void> = compress(batch).catch((error: unknown) => {
        failure ??= error;
      }).finally(() => running.delete(job));
      running.add(job);
      batch = [];
    }
    if (running.size >= lanes) await Promise.race(running);
    if (failure !== undefined) throw failure;
  };
  try {
    let at = 0;
    let pieces: Buffer[] = [];
    let have = 0;
    const take = async (data: Buffer) => {
      const [length, sha256] = index.chunks[at]!;
      const actual = createHash('sha256').update(data).digest('hex');
      if (actual !== sha256) {
        throw new KubeosError('E_HASH_MISMATCH', `chunk ${at} of the image (${length} bytes) has sha256 ${actual}, the index says ${sha256}`, {
          hint: 'the image changed after it was indexed: create the bundle again',
          details: { chunk: at, expected: sha256, actual },
        });
      }
      at++;
      if (seen.has(sha256) || options.skip?.(sha256) === true || (await exists(join(dir, `${sha256}.zst`)))) {
        skipped += seen.has(sha256) ? 0 : 1;
        seen.add(sha256);
        return;
      }
      seen.add(sha256);
      await writeFile(join(scratch, sha256), data);
      written.push(sha256);
      batch.push(sha256);
      if (batch.length >= batchFiles) await flush();
    };
    for await (const piece of image) {
      let data = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
      while (data.length > 0) {
        const want = index.chunks[at]?.[0];
        if (want === undefined) throw new KubeosError('E_HASH_MISMATCH', 'the image is longer than its chunk index', { hint: 'create the bundle again' });
        const part = data.subarray(0, want - have);
        pieces.push(part);
        have += part.length;
        data = data.subarray(part.length);
        if (have === want) {
          const chunk = pieces.length === 1 ? pieces[0]! : Buffer.concat(pieces);
          pieces = [];
          have = 0;
          await take(chunk);
        }
      }
    }
    if (at !== index.chunks.length || have !== 0) throw new KubeosError('E_HASH_MISMATCH', `the image ends inside chunk ${at} of ${index.chunks.length} of its index`, { hint: 'create the bundle again' });
    await flush();
    await Promise.all(running);
    if (failure !== undefined) throw failure;
    return { written, skipped, compressedBytes };
  } finally {
    // no zstd may still write into the scratch folder when it goes
    await Promise.allSettled(running);
    await rm(scratch, { recursive: true, force: true });
  }
}

async function exists(path: string): Promise<boolean> {
  return access(path).then(() => true, () => false);
}

/** The chunk files of a store folder (tests, publish from a folder). */
export async function listChunkFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((name) => /^[0-9a-f]{64}\.zst$/.test(name)).sort();
}
