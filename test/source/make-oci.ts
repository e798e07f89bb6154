/** OCI image layouts and `docker save` archives made with tar-stream, for the source tests. */
import { createHash } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { gzipSync } from 'node:zlib';
import * as tar from 'tar-stream';
import { run } from '../../runtime/core/exec.js';

export interface LayerEntry {
  name: string;
  type?: 'file' | 'directory' | 'symlink' | 'link' | 'character-device' | 'block-device' | 'fifo';
  content?: string;
  mode?: number;
  uid?: number;
  gid?: number;
  mtime?: number;
  linkname?: string;
  devmajor?: number;
  devminor?: number;
  pax?: Record<string, string>;
}

export async function makeTar(entries: LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const chunk of pack) chunks.push(chunk as Buffer);
  })();
  for (const e of entries) {
    const type = e.type ?? 'file';
    const body = Buffer.from(type === 'file' ? e.content ?? '' : '');
    const header = {
      name: e.name, type, size: body.length, mode: e.mode ?? (type === 'directory' ? 0o755 : 0o644),
      uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: new Date((e.mtime ?? 1_650_000_000) * 1000),
      linkname: e.linkname, devmajor: e.devmajor, devminor: e.devminor, pax: e.pax,
    };
    await pipeline(Readable.from([body]), pack.entry(header));
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

export const sha256 = (data: Buffer) => `sha256:${createHash('sha256').update(data).digest('hex')}`;

export type Compression = 'gzip' | 'zstd' | 'none';

export async function compress(data: Buffer, how: Compression, dir: string): Promise<Buffer> {
  if (how === 'gzip') return gzipSync(data);
  if (how === 'none') return data;
  const file = join(dir, `zstd-${Math.random().toString(36).slice(2)}`);
  await writeFile(file, data);
  await run('zstd', ['-q', '-f', file, '-o', `${file}.zst`]);
  const { readFile } = await import('node:fs/promises');
  return readFile(`${file}.zst`);
}

export interface Blob { name: string; data: Buffer }

/** The blobs and documents of an OCI layout whose manifest lists `layers` (bytes as given). */
export function ociFiles(layers: Buffer[], options: { mediaType?: string; lie?: (i: number) => { digest?: string; size?: number } } = {}): Blob[] {
  const blobs: Blob[] = [];
  const add = (data: Buffer, digest = sha256(data)) => {
    blobs.push({ name: `blobs/sha256/${digest.slice(7)}`, data });
    return { digest, size: data.length };
  };
  // a lying descriptor: the blob is stored under the digest the manifest claims
  const layerDescriptors = layers.map((data, i) => ({ mediaType: options.mediaType ?? 'application/vnd.oci.image.layer.v1.tar+gzip', ...add(data, options.lie?.(i).digest), ...options.lie?.(i) }));
  const config = add(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })));
  const manifest = add(Buffer.from(JSON.stringify({
    schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: layerDescriptors,
  })));
  const index = { schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': 'test:1' } }] };
  return [{ name: 'oci-layout', data: Buffer.from('{"imageLayoutVersion":"1.0.0"}') }, { name: 'index.json', data: Buffer.from(JSON.stringify(index)) }, ...blobs];
}

/** A `docker save` archive (old layout: <id>/layer.tar, config with diff_ids). */
export function dockerFiles(layers: Buffer[]): Blob[] {
  const files: Blob[] = layers.map((data, i) => ({ name: `layer${i}/layer.tar`, data }));
  const config = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map(sha256) } }));
  files.push({ name: 'config.json', data: config });
  files.push({ name: 'manifest.json', data: Buffer.from(JSON.stringify([{ Config: 'config.json', RepoTags: ['test:1'], Layers: layers.map((_, i) => `layer${i}/layer.tar`) }])) });
  return files;
}

export async function writeLayoutDir(dir: string, files: Blob[]): Promise<string> {
  for (const f of files) {
    await mkdir(join(dir, f.name, '..'), { recursive: true });
    await writeFile(join(dir, f.name), f.data);
  }
  return dir;
}


/** Like writeArchive but binary-safe (blobs are binary). */
export async function writeBinaryArchive(file: string, files: Blob[]): Promise<string> {
  const pack = tar.pack();
  const done = pipeline(pack, createWriteStream(file));
  for (const f of files) await pipeline(Readable.from([f.data]), pack.entry({ name: f.name, size: f.data.length, mode: 0o644, mtime: new Date(0) }));
  pack.finalize();
  await done;
  return file;
}
