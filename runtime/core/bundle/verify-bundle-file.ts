/** Verifies a bundle file end to end with the same streaming reader the agent uses on a download. */
import { open } from 'node:fs/promises';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { KubeosError } from '../errors.js';
import { HashTap } from './hash-tap.js';
import type { BundleManifest } from './manifest.js';
import { readBundle, readBundleHeader, type ReadBundleOptions, type UnverifiedHeader } from './read-bundle.js';

export interface VerifiedBundleFile {
  manifest: BundleManifest;
  keyId: string;
  /** Size and sha256 of the bundle file itself (what a channel index names). */
  size: number;
  sha256: string;
}

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
    const tap = new HashTap(options.onBytes);
    const source = file.createReadStream({ autoClose: false });
    source.pipe(tap);
    source.on('error', (error) => tap.destroy(error));
    const bundle = await readBundle(tap, options);
    await pipeline(bundle.payload, new Writable({ write: (_chunk, _encoding, callback) => callback() }));
    return { manifest: bundle.manifest, keyId: bundle.keyId, size: tap.bytes, sha256: tap.digest() };
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
