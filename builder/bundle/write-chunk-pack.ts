/**
 * Writes the chunk pack of a release (runtime/core/bundle/chunk-pack.ts) into a store folder: the
 * frames writeChunkFiles has just written, concatenated in image order, and their map. The pack is
 * written under a temporary name and renamed, then the map the same way: a map in the store means
 * its pack is whole. An image whose map is already there keeps it (publishing the same image again
 * writes no chunks, and its first pack still holds them).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { access, mkdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { encodePackMap, packPaths } from '../../runtime/core/bundle/chunk-pack.js';
import type { ChunkIndexInfo } from '../../runtime/core/bundle/manifest.js';

export interface WrittenPack {
  /** Paths relative to the store folder. */
  pack: string;
  map: string;
  chunks: number;
  /** Bytes of the pack. */
  bytes: number;
}

/**
 * Packs the chunks `written` (sha256s in image order, each `<dir>/<sha256>.zst`). Undefined when
 * there is nothing to pack or the image has a pack already.
 */
export async function writeChunkPack(dir: string, index: ChunkIndexInfo, written: readonly string[], imageSha256: string, signal?: AbortSignal): Promise<WrittenPack | undefined> {
  const paths = packPaths(imageSha256);
  if (written.length === 0 || (await access(join(dir, paths.map)).then(() => true, () => false))) return undefined;
  const first = new Map<string, number>();
  index.chunks.forEach(([, sha256], position) => {
    if (!first.has(sha256)) first.set(sha256, position);
  });
  const entries: { position: number; size: number }[] = [];
  for (const sha256 of written) {
    const position = first.get(sha256);
    if (position === undefined) throw new Error(`chunk ${sha256} is not in the index it was written for`);
    entries.push({ position, size: (await stat(join(dir, `${sha256}.zst`))).size });
  }
  entries.sort((a, b) => a.position - b.position);
  const byPosition = new Map(written.map((sha256) => [first.get(sha256)!, sha256]));
  await mkdir(dirname(join(dir, paths.pack)), { recursive: true });
  const partial = join(dir, `${paths.pack}.partial-${process.pid}`);
  try {
    const out = createWriteStream(partial);
    async function* frames() {
      for (const entry of entries) {
        signal?.throwIfAborted();
        for await (const piece of createReadStream(join(dir, `${byPosition.get(entry.position)!}.zst`))) yield piece as Buffer;
      }
    }
    await pipeline(frames, out, { signal });
    await rename(partial, join(dir, paths.pack));
    const map = encodePackMap(entries);
    await writeFile(`${join(dir, paths.map)}.partial-${process.pid}`, map);
    await rename(`${join(dir, paths.map)}.partial-${process.pid}`, join(dir, paths.map));
  } finally {
    await rm(partial, { force: true });
  }
  return { ...paths, chunks: entries.length, bytes: entries.reduce((sum, e) => sum + e.size, 0) };
}
