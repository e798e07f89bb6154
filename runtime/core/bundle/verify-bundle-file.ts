/**
 * Verifies a bundle file end to end with the same streaming reader the agent uses on a download,
 * every check included (signature, manifest, chunk hashes, the sha256 of the image and of the
 * compressed payload, sizes), and hashes the file itself. From 32 MiB the hashing runs on two
 * worker threads beside zstd (the chunks, the image, the compressed payload and the file: four
 * sha256 passes, some 2.9 GB for a 1 GiB image), and the image lands from zstd in pooled buffers
 * given back as soon as they are checked: this thread moves bytes, it does not hash them.
 */
import { open } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KubeosError } from '../errors.js';
import { ChunkPool } from './chunk-pool.js';
import { HashTap } from './hash-tap.js';
import type { BundleManifest } from './manifest.js';
import { OffThreadHashTap } from './stream-hasher.js';
import { readBundle, readBundleHeader, type ReadBundleOptions, type UnverifiedHeader } from './read-bundle.js';

export interface VerifiedBundleFile {
  manifest: BundleManifest;
  keyId: string;
  /** Size and sha256 of the bundle file itself (what a channel index names). */
  size: number;
  sha256: string;
}

/** Bundles at least this big hash on worker threads (see above); smaller ones on this thread. */
const offThreadBytes = 32 * 1024 * 1024;
/** Reads of the file: fewer, bigger pieces through the tar parser and into zstd. */
const readBytes = 1 << 20;
/** Chunks being filled or hashed at once; nothing else holds them (they are given back when checked). */
const poolBytes = 4 * 4 * 1024 * 1024;

async function openBundle(path: string) {
  let file;
  try {
    file = await open(path, 'r');
  } catch (cause) {
    const code = (cause as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : (code ?? String(cause));
    throw new KubeosError('E_USAGE', `cannot open bundle ${path}: ${why}`, { cause, hint: 'name the .kubeos file kubeos bundle create wrote', details: { path } });
  }
  if ((await file.stat()).isDirectory()) {
    await file.close();
    throw new KubeosError('E_USAGE', `bundle ${path} is a directory`, { hint: 'name the .kubeos file kubeos bundle create wrote', details: { path } });
  }
  return file;
}

export async function verifyBundleFile(path: string, options: ReadBundleOptions & { onBytes?: (bytes: number) => void }): Promise<VerifiedBundleFile> {
  const file = await openBundle(path);
  try {
    // below this size two workers cost more to start than the hashing they would take over
    const offThread = (await file.stat()).size >= offThreadBytes;
    const tap = offThread ? new OffThreadHashTap(options.onBytes) : new HashTap(options.onBytes);
    const source = file.createReadStream({ autoClose: false, highWaterMark: readBytes });
    source.pipe(tap);
    source.on('error', (error) => tap.destroy(error));
    const pool = offThread ? new ChunkPool(poolBytes) : undefined;
    const bundle = await readBundle(tap, { ...options, chunkPool: pool, chunksOnly: options.chunksOnly === true });
    await pipeline(bundle.payload, new Writable({
      write: (chunk: Buffer, _encoding, callback) => {
        pool?.give(chunk);
        callback();
      },
    }));
    return { manifest: bundle.manifest, keyId: bundle.keyId, size: tap.bytes, sha256: await tap.digest() };
  } finally {
    await file.close();
  }
}

export async function readBundleFileHeader(path: string): Promise<UnverifiedHeader> {
  const file = await openBundle(path);
  try {
    return await readBundleHeader(file.createReadStream({ autoClose: false }));
  } finally {
    await file.close();
  }
}
