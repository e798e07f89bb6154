/**
 * A static update server for agent tests, on 127.0.0.1 only: serves a directory laid out like a
 * published bucket (channels/, bundles/) with Range support, and can cut a response short once
 * (a dropped connection) or report how many bytes it sent (so a test can act mid-download), and
 * counts the body bytes it wrote per top folder (what a delta install cost on the wire).
 */
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, stat, writeFile } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join, normalize } from 'node:path';
import type { KeyObject } from 'node:crypto';
import type { ExecutionContext } from 'ava';
import { signChannel, type ChannelSigned } from '../../runtime/core/channel/channel-index.js';
import { bundlePath, channelPath } from '../../runtime/core/channel/layout.js';
import type { CreatedBundle } from '../../builder/bundle/create-bundle.js';
import { writeBundleChunks } from '../../builder/bundle/write-bundle-chunks.js';
import { writeChunkPack } from '../../builder/bundle/write-chunk-pack.js';
import { readUnsignedBundle } from '../../runtime/core/bundle/read-bundle.js';

export interface UpdateServer {
  url: string;
  root: string;
  /** Requests seen, with their Range header. */
  requests: { path: string; range: string | undefined }[];
  /** The next GET of `path` sends only `bytes` of its body, then the connection is destroyed. */
  dropOnce(path: string, bytes: number): void;
  /** Called with the running total of body bytes sent for bundles. */
  onBundleBytes?: (sent: number) => void;
  /** Throttle bundle bodies to this many bytes per write, waiting for each to drain. */
  slow: boolean;
  /** Bundle responses wait for this before their first byte (a test holding a download open). */
  gate?: Promise<void>;
  /** Called with the number of chunk requests (chunks/) so far, as each arrives. */
  onChunkRequest?: (count: number) => void;
  /** Each chunk response waits this long first. */
  chunkDelayMs: number;
  /** TCP connections accepted (keep-alive shows as fewer connections than requests). */
  connections: number;
  /**
   * Body bytes written, per top folder (`bundles`, `chunks`, `channels`), over all requests. Bytes
   * written are not bytes read: a client that stops a download leaves what was in flight uncounted by it.
   */
  bodyBytes: Record<string, number>;
}

/** A request for a closed range (`bytes=A-B`): the agent reading a bundle's header only, not a download or its resume (`bytes=N-`). */
export function isHeaderRead(request: { path: string; range: string | undefined }): boolean {
  return request.path.startsWith('bundles/') && /^bytes=\d+-\d+$/.test(request.range ?? '');
}

/** The bundle downloads and their resumes, header reads left out. */
export function bundleDownloads(server: UpdateServer): { path: string; range: string | undefined }[] {
  return server.requests.filter((r) => r.path.startsWith('bundles/') && !isHeaderRead(r));
}

export async function startUpdateServer(t: ExecutionContext, root: string): Promise<UpdateServer> {
  const drops = new Map<string, number>();
  const state: UpdateServer = {
    url: '',
    root,
    requests: [],
    dropOnce: (path, bytes) => drops.set(path, bytes),
    slow: false,
    chunkDelayMs: 0,
    connections: 0,
    bodyBytes: {},
  };
  let chunkRequests = 0;
  const server: Server = createServer((req, res) => {
    void (async () => {
      const path = normalize(decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname)).replace(/^\/+/, '');
      state.requests.push({ path, range: req.headers.range });
      if (path.startsWith('chunks/')) {
        state.onChunkRequest?.(++chunkRequests);
        if (state.chunkDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, state.chunkDelayMs));
      }
      const file = join(root, path);
      let size: number;
      try {
        size = (await stat(file)).size;
      } catch {
        res.writeHead(404).end();
        return;
      }
      // ranges as S3 serves them: `bytes=N-` and `bytes=N-M`
      let start = 0;
      let end = size - 1;
      const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
      if (range) {
        start = Number(range[1]);
        if (range[2] !== '') end = Math.min(end, Number(range[2]));
      }
      res.writeHead(range ? 206 : 200, {
        'content-length': String(end + 1 - start),
        'etag': `"${size}"`,
        'accept-ranges': 'bytes',
        ...(range ? { 'content-range': `bytes ${start}-${end}/${size}` } : {}),
      });
      const dropAt = drops.get(path);
      if (path.startsWith('bundles/')) await state.gate;
      let sent = 0;
      const folder = path.split('/')[0]!;
      const stream = createReadStream(file, { start, end, highWaterMark: state.slow ? 64 * 1024 : 1 << 20 });
      for await (const chunk of stream) {
        let piece = chunk as Buffer;
        if (dropAt !== undefined && sent + piece.length > dropAt) piece = piece.subarray(0, dropAt - sent);
        if (!res.write(piece)) await new Promise((resolve) => res.once('drain', resolve));
        sent += piece.length;
        state.bodyBytes[folder] = (state.bodyBytes[folder] ?? 0) + piece.length;
        if (path.startsWith('bundles/')) state.onBundleBytes?.(start + sent);
        if (dropAt !== undefined && sent >= dropAt) {
          drops.delete(path);
          res.destroy();
          stream.destroy();
          return;
        }
      }
      res.end();
    })().catch(() => res.destroy());
  });
  server.on('connection', () => {
    state.connections++;
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  state.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return state;
}

/** Places a bundle under bundles/ and writes a signed channel index for it, as `kubeos publish` lays out a bucket. */
export async function publishToDir(root: string, bundle: CreatedBundle, key: KeyObject, options: { channel?: string; serial: number; expires?: Date; published?: Date; earlier?: CreatedBundle[]; chunks?: boolean; /** With chunks: also the pack (default true). */ pack?: boolean }): Promise<ChannelSigned> {
  const channel = options.channel ?? 'stable';
  await mkdir(join(root, 'bundles'), { recursive: true });
  await mkdir(join(root, 'channels'), { recursive: true });
  await copyFile(bundle.path, join(root, bundlePath(bundle.sha256)));
  if (options.chunks === true) await writeChunkStore(root, bundle, { pack: options.pack });
  const m = bundle.manifest;
  const signed: ChannelSigned = {
    type: 'kubeos-channel',
    format: 1,
    channel,
    serial: options.serial,
    published: (options.published ?? new Date()).toISOString(),
    expires: (options.expires ?? new Date(Date.now() + 86_400_000)).toISOString(),
    os: m.os,
    version: m.version,
    arch: m.arch,
    compatible: m.compatible,
    bundle: { path: bundlePath(bundle.sha256), size: bundle.size, sha256: bundle.sha256 },
  };
  if (options.earlier !== undefined) {
    // the releases the channel offered before, as kubeos publish carries them forward
    for (const e of options.earlier) await copyFile(e.path, join(root, bundlePath(e.sha256)));
    signed.releases = [bundle, ...options.earlier].map((b) => ({ version: b.manifest.version, published: signed.published, bundle: { path: bundlePath(b.sha256), size: b.size, sha256: b.sha256 } }));
  }
  await writeFile(join(root, channelPath(channel)), signChannel(signed, key));
  return signed;
}

/**
 * Writes `chunks/<sha256>.zst` for a format 2 bundle's index (and its index object) under root, from
 * the bundle's payload, and the pack of the chunks written now (unless `pack: false`), as kubeos
 * publish uploads them.
 */
export async function writeChunkStore(root: string, bundle: CreatedBundle, options: { pack?: boolean } = {}): Promise<void> {
  const { manifest, payload } = await readUnsignedBundle(createReadStream(bundle.path));
  const { written, index } = await writeBundleChunks(payload, manifest, join(root, 'chunks'));
  if (options.pack !== false) await writeChunkPack(join(root, 'chunks'), index, written, bundle.manifest.payload.uncompressedSha256);
}
