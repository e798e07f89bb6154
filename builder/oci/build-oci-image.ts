/**
 * The container image the manifests in deploy/ run (the operator Deployment and the agent
 * DaemonSet), built the way kubeos builds everything: no container engine, no root, reproducible.
 * One layer holds Node.js with the shared libraries it loads (per ldd), the whole `kubeos` CLI
 * bundled into one file, CA certificates and a passwd for the non-root user; the result is an OCI
 * image layout (and optionally the same layout as one tar archive) whose bytes depend only on the
 * inputs and SOURCE_DATE_EPOCH.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { createGzip } from 'node:zlib';
import tar from 'tar-stream';
import { HashTap } from '../../runtime/core/bundle/hash-tap.js';
import { KubeosError } from '../../runtime/core/errors.js';
import { findTool, requireTools, run } from '../../runtime/core/exec.js';
import { parseLdd } from '../rootfs/copy-binary.js';
import { bundleProgram } from '../rootfs/bundle-agent.js';

export const imageRepository = 'ghcr.io/kubeos/kubeos';

export interface OciBuildOptions {
  out: string;
  /** The tag in index.json (org.opencontainers.image.ref.name); the project version by default. */
  tag: string;
  /** Also write the layout as one tar (skopeo's oci-archive:). */
  archive?: string;
  /** Seconds since 1970 for every mtime and the image's created time. */
  epoch: number;
  signal?: AbortSignal;
  onProgress?: (step: string) => void;
}

export interface OciBuildResult {
  out: string;
  reference: string;
  /** The manifest digest: what `image: REPO@sha256:...` pins. */
  digest: string;
  config: string;
  layers: Array<{ digest: string; size: number; diffId: string }>;
  archive: string | undefined;
}

interface LayerFile {
  path: string;
  mode: number;
  /** A file on the host, or literal content. */
  source: string | Buffer;
}

const caBundle = '/etc/ssl/certs/ca-certificates.crt';
const nonRoot = 65532;

function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** A host program and every shared library it loads (per ldd), at the same paths. */
async function programFiles(source: string, target: string, signal?: AbortSignal): Promise<LayerFile[]> {
  const { stdout } = await run('ldd', [source], { signal, timeoutMs: 30_000 });
  return [{ path: target, mode: 0o755, source }, ...parseLdd(stdout).map((lib) => ({ path: lib.slice(1), mode: 0o755, source: lib }))];
}

/** What goes into the layer, sorted so the tar is the same every time. */
async function planLayer(program: { dir: string; files: string[] }, signal?: AbortSignal): Promise<LayerFile[]> {
  // zstd: the agent decompresses payloads with it; nsenter: the DaemonSet reboots the host through PID 1
  await requireTools(['zstd', 'nsenter', 'ldd']);
  const files: LayerFile[] = [
    ...(await programFiles(process.execPath, 'usr/bin/node', signal)),
    ...(await programFiles((await findTool('zstd'))!, 'usr/bin/zstd', signal)),
    ...(await programFiles((await findTool('nsenter'))!, 'usr/bin/nsenter', signal)),
    // not under /usr/lib/kubeos: the agent DaemonSet mounts the host's (agent.json, keys) there
    ...program.files.map((file) => ({ path: `opt/kubeos/${file}`, mode: 0o644, source: join(program.dir, file) })),
    { path: 'etc/passwd', mode: 0o644, source: Buffer.from(`root:x:0:0:root:/root:/sbin/nologin\nkubeos:x:${nonRoot}:${nonRoot}:kubeos:/tmp:/sbin/nologin\n`) },
    { path: 'etc/group', mode: 0o644, source: Buffer.from(`root:x:0:\nkubeos:x:${nonRoot}:\n`) },
  ];
  if (existsSync(caBundle)) files.push({ path: caBundle.slice(1), mode: 0o644, source: caBundle });
  const unique = new Map(files.map((f) => [f.path, f]));
  files.splice(0, files.length, ...unique.values());
  return files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
}

/** The layer tar: parent directories first, fixed owner and mtime, then the files. */
function packLayer(files: LayerFile[], epoch: number): tar.Pack {
  const pack = tar.pack();
  const mtime = new Date(epoch * 1000);
  void (async () => {
    const dirs = new Set<string>(['tmp']);
    for (const file of files) for (let d = dirname(file.path); d !== '.'; d = dirname(d)) dirs.add(d);
    for (const dir of [...dirs].sort()) {
      await new Promise<void>((resolve, reject) => pack.entry({ name: `${dir}/`, type: 'directory', mode: dir === 'tmp' ? 0o1777 : 0o755, mtime, uid: 0, gid: 0 }, (e) => (e ? reject(e) : resolve())));
    }
    for (const file of files) {
      if (Buffer.isBuffer(file.source)) {
        await new Promise<void>((resolve, reject) => pack.entry({ name: file.path, mode: file.mode, mtime, uid: 0, gid: 0 }, file.source as Buffer, (e) => (e ? reject(e) : resolve())));
      } else {
        const size = (await stat(file.source)).size;
        await pipeline(createReadStream(file.source), pack.entry({ name: file.path, size, mode: file.mode, mtime, uid: 0, gid: 0 }));
      }
    }
    pack.finalize();
  })().catch((error: unknown) => pack.destroy(error as Error));
  return pack;
}

/** The layer blob: the tar is hashed for its diff_id, gzipped, hashed again for its digest, in one pipeline. */
async function writeLayer(blobs: string, tarStream: tar.Pack): Promise<{ digest: string; size: number; diffId: string }> {
  const temp = join(blobs, `.incoming-${process.pid}`);
  const uncompressed = new HashTap();
  const compressed = new HashTap();
  await pipeline(tarStream, uncompressed, createGzip({ level: 9 }), compressed, createWriteStream(temp));
  const digest = `sha256:${compressed.digest()}`;
  await rename(temp, join(blobs, compressed.digest()));
  return { digest, size: compressed.bytes, diffId: `sha256:${uncompressed.digest()}` };
}

async function writeBlob(blobs: string, data: Buffer): Promise<{ digest: string; size: number }> {
  const digest = sha256(data);
  await writeFile(join(blobs, digest.slice('sha256:'.length)), data);
  return { digest, size: data.length };
}

function json(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value));
}

/** A directory tree as a reproducible tar (for the oci-archive form of the layout). */
async function writeArchive(root: string, entries: string[], out: string, epoch: number): Promise<void> {
  const pack = tar.pack();
  const mtime = new Date(epoch * 1000);
  const done = pipeline(pack, createWriteStream(out));
  // a failed entry fails the write too; both are awaited, so neither rejection goes unhandled
  const write = async () => {
  for (const entry of entries) {
    if (entry.endsWith('/')) {
      await new Promise<void>((resolve, reject) => pack.entry({ name: entry, type: 'directory', mode: 0o755, mtime, uid: 0, gid: 0 }, (e) => (e ? reject(e) : resolve())));
      continue;
    }
    const size = (await stat(join(root, entry))).size;
    await pipeline(createReadStream(join(root, entry)), pack.entry({ name: entry, size, mode: 0o644, mtime, uid: 0, gid: 0 }));
  }
  pack.finalize();
  };
  const [written] = await Promise.allSettled([write().catch((error: unknown) => {
    pack.destroy(error as Error);
    throw error;
  }), done]);
  if (written.status === 'rejected') throw written.reason;
  await done;
}

export async function buildOciImage(options: OciBuildOptions): Promise<OciBuildResult> {
  const progress = options.onProgress ?? (() => {});
  if (existsSync(options.out) && !existsSync(join(options.out, 'oci-layout'))) {
    throw new KubeosError('E_USAGE', `--out ${options.out} exists and is not an OCI image layout`, { hint: 'name a new directory, or remove this one', details: { out: options.out } });
  }
  const work = await mkdtemp(join(tmpdir(), 'kubeos-oci-'));
  // a fresh layout next to the target, moved into place at the end: a failed build leaves the old one
  const staging = `${options.out}.partial-${process.pid}`;
  try {
    progress('bundling the operator program');
    const dir = join(work, 'program');
    const files = await planLayer({ dir, files: await bundleProgram('runtime/operator/cli/main.ts', dir) }, options.signal);

    await rm(staging, { recursive: true, force: true });
    const blobs = join(staging, 'blobs', 'sha256');
    await mkdir(blobs, { recursive: true });

    progress('writing the layer');
    const { diffId, ...layer } = await writeLayer(blobs, packLayer(files, options.epoch));

    const created = new Date(options.epoch * 1000).toISOString();
    const config = await writeBlob(blobs, json({
      created,
      architecture: 'amd64',
      os: 'linux',
      config: {
        Entrypoint: ['/usr/bin/node', '/opt/kubeos/kubeos.mjs'],
        Cmd: ['--help'],
        Env: ['PATH=/usr/bin:/bin', 'NODE_ENV=production'],
        WorkingDir: '/tmp',
        Labels: { 'org.opencontainers.image.title': 'kubeos', 'org.opencontainers.image.version': options.tag },
      },
      rootfs: { type: 'layers', diff_ids: [diffId] },
      history: [{ created, created_by: 'kubeos oci build' }],
    }));
    const manifest = await writeBlob(blobs, json({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config.digest, size: config.size },
      layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.size }],
      annotations: { 'org.opencontainers.image.created': created },
    }));
    await writeFile(join(staging, 'oci-layout'), json({ imageLayoutVersion: '1.0.0' }));
    await writeFile(join(staging, 'index.json'), json({
      schemaVersion: 2,
      mediaType: 'application/vnd.oci.image.index.v1+json',
      manifests: [{
        mediaType: 'application/vnd.oci.image.manifest.v1+json', digest: manifest.digest, size: manifest.size,
        platform: { architecture: 'amd64', os: 'linux' },
        annotations: { 'org.opencontainers.image.ref.name': options.tag },
      }],
    }));

    let archive: string | undefined;
    if (options.archive !== undefined) {
      progress('writing the archive');
      const entries = ['blobs/', 'blobs/sha256/', ...[config, layer, manifest].map((b) => `blobs/sha256/${b.digest.slice('sha256:'.length)}`).sort(), 'index.json', 'oci-layout'];
      await mkdir(dirname(options.archive), { recursive: true });
      await writeArchive(staging, entries, options.archive, options.epoch);
      archive = options.archive;
    }
    await rm(options.out, { recursive: true, force: true });
    await mkdir(dirname(options.out), { recursive: true });
    await rename(staging, options.out);
    return { out: options.out, reference: `${imageRepository}:${options.tag}`, digest: manifest.digest, config: config.digest, layers: [{ ...layer, diffId }], archive };
  } finally {
    await rm(work, { recursive: true, force: true });
    await rm(staging, { recursive: true, force: true });
  }
}

/** The project version from package.json: the tag deploy/ pins. */
export async function projectVersion(root: string): Promise<string> {
  return (JSON.parse(await readFile(join(root, 'package.json'), 'utf8')) as { version: string }).version;
}
