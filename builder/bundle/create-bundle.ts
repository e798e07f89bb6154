/**
 * Writes a signed bundle without holding the image in memory. `zstd` reads the rootfs itself, a
 * worker thread reads it too and hashes it (per chunk and whole), and this thread reads it a third
 * time to cut the delta index; nothing is piped through Node to zstd. The file's size, mtime and
 * inode are compared before and after, so the hashes and the index describe the bytes compressed
 * (and the agent checks every chunk against them anyway).
 * The manifest precedes the payload in the tar and carries its size and sha256, so it is written
 * last: zstd's output goes straight to where the payload's data will sit in the bundle (after the
 * members and headers before it, whose length is guessed before compressing), and the headers are
 * written around it. A wrong guess costs a copy of the payload into place, never different bytes.
 * The bundle appears at `out` only once complete (rename).
 */
import { dirname } from 'node:path';
import { createReadStream, createWriteStream } from 'node:fs';
import { open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { KeyObject } from 'node:crypto';
import * as tar from 'tar-stream';
import { canonicalJson } from '../../runtime/core/crypto/canonical-json.js';
import { keyIdOf } from '../../runtime/core/crypto/keys.js';
import { signBytes } from '../../runtime/core/crypto/signature.js';
import { KubeosError } from '../../runtime/core/errors.js';
import { HashTap } from '../../runtime/core/bundle/hash-tap.js';
import {
  bundleFormat,
  defaultChunkSize,
  manifestMember,
  maxManifestBytes,
  payloadMember,
  signatureMember,
  validateManifest,
  type BundleManifest,
  type ChunkIndexInfo,
} from '../../runtime/core/bundle/manifest.js';
import { describeIndexObject, indexObjectBytes } from '../../runtime/core/bundle/chunk-index-object.js';
import { startZstd } from '../../runtime/core/bundle/run-zstd.js';
import { Chunker, defaultCdcRule, type Chunk } from '../../runtime/core/bundle/chunk-index.js';
import { hashImageFile } from './hash-image-file.js';
import type { BundleMetadata } from './resolve-metadata.js';

/** Fixed level; multi-threaded zstd output does not depend on the thread count, so -T0 is safe. */
export const zstdLevel = 3;
export const zstdCompressFlags = [`-${zstdLevel}`, '-T0', '-q', '--no-progress'];
export function zstdCompressArgs(file: string): string[] {
  return [...zstdCompressFlags, '-c', '--', file];
}

export interface CreateBundleOptions {
  rootfs: string;
  out: string;
  privateKey: KeyObject;
  metadata: BundleMetadata;
  /** Seconds since 1970 (SOURCE_DATE_EPOCH); defaults to the rootfs mtime, never the wall clock. */
  sourceDateEpoch?: number | undefined;
  chunkSize?: number;
  /**
   * The content-defined chunk index of the image, for delta installs (format 2; older readers
   * ignore either form): 'object' signs the size and sha256 of the binary index object the chunk
   * store holds (36 bytes a chunk, chunk-index-object.ts), 'inline' the index itself in the
   * manifest (hex JSON, ~75 bytes a chunk, as bundles were made before), 'none' leaves it out
   * (format 1). Default 'object': it costs a delta host under half the bytes of 'inline', and
   * older hosts install either in full (they ignore both fields).
   */
  index?: IndexForm;
  signal?: AbortSignal | undefined;
  onProgress?: (step: string, fraction?: number, bytes?: { done: number; total: number }) => void;
  /** Where zstd writes the payload in the partial bundle, instead of the guess (tests: a wrong one must cost only a copy). */
  payloadOffset?: number;
}

export type IndexForm = 'object' | 'inline' | 'none';

export interface CreatedBundle {
  path: string;
  manifest: BundleManifest;
  /** The chunk index cut from the image (whichever form the manifest signs), for the chunk store; undefined for 'none'. */
  index?: ChunkIndexInfo;
  /** Size and sha256 of the whole bundle file. */
  size: number;
  sha256: string;
  /** The payload was copied into place because the headers' length was guessed wrong (false: zstd wrote it where it is). */
  copiedPayload: boolean;
}

const zstdTimeoutMs = 6 * 60 * 60 * 1000;
/**
 * Reads of the image for the index, into one buffer used again and again: the chunker keeps no
 * reference to what it was given, and a fresh buffer per read made the garbage collector a
 * noticeable part of bundle create.
 */
const indexReadBytes = 1 << 20;
/** Reads of the compressed payload into the tar: fewer, bigger pieces. */
const copyReadBytes = 1 << 20;
/** A tar header, and the unit a member's data is padded to. */
const tarBlock = 512;
const padded = (bytes: number) => Math.ceil(bytes / tarBlock) * tarBlock;
/** A placeholder of a sha256's length, for guessing the manifest's. */
const someSha256 = '0'.repeat(64);

/**
 * Where the payload's data starts in a bundle of this manifest and a signature this long: after the
 * manifest's and the signature's headers and padded data, and the payload's header.
 */
function payloadOffsetOf(manifest: BundleManifest, signatureBytes: number): number {
  return tarBlock + padded(Buffer.byteLength(canonicalJson(manifest))) + tarBlock + padded(signatureBytes) + tarBlock;
}

/**
 * Writes a tar stream at its own offsets in `path`, except the range [from, to): zstd wrote the
 * payload there already, and the stream's bytes for it are those same bytes, read back to hash the
 * whole file.
 */
class WriteAroundPayload extends Writable {
  private handle: FileHandle | undefined;
  private position = 0;

  constructor(private readonly path: string, private readonly from: number, private readonly to: number) {
    super({ highWaterMark: copyReadBytes });
  }

  override _construct(callback: (error?: Error | null) => void): void {
    open(this.path, 'r+').then((handle) => {
      this.handle = handle;
      callback();
    }, callback);
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    const start = this.position;
    const end = start + chunk.length;
    this.position = end;
    const handle = this.handle!;
    const writes: Promise<void>[] = [];
    if (start < this.from) writes.push(writeExactly(handle, chunk.subarray(0, Math.min(end, this.from) - start), start));
    if (end > this.to) {
      const at = Math.max(start, this.to);
      writes.push(writeExactly(handle, chunk.subarray(at - start), at));
    }
    Promise.all(writes).then(() => callback(), callback);
  }

  override _final(callback: (error?: Error | null) => void): void {
    const handle = this.handle!;
    this.handle = undefined;
    handle.close().then(() => callback(), callback);
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const handle = this.handle;
    this.handle = undefined;
    if (handle === undefined) return callback(error);
    handle.close().then(() => callback(error), (closing: Error) => callback(error ?? closing));
  }
}

async function writeExactly(handle: FileHandle, data: Buffer, position: number): Promise<void> {
  const { bytesWritten } = await handle.write(data, 0, data.length, position);
  if (bytesWritten !== data.length) throw new Error(`short write: ${bytesWritten} of ${data.length} bytes at ${position}`);
}

/** The CDC index of `path` from a read of its own (see createBundle). */
async function indexImageFile(path: string, chunker: Chunker, signal: AbortSignal): Promise<Chunk[]> {
  const file = await open(path, 'r');
  try {
    const indexed: Chunk[] = [];
    const buffer = Buffer.allocUnsafe(indexReadBytes);
    for (let position = 0; ; ) {
      signal.throwIfAborted();
      const { bytesRead } = await file.read(buffer, 0, buffer.length, position);
      if (bytesRead === 0) break;
      position += bytesRead;
      for (const c of chunker.push(buffer.subarray(0, bytesRead))) indexed.push(c);
    }
    for (const c of chunker.finish()) indexed.push(c);
    return indexed;
  } finally {
    await file.close();
  }
}

export async function createBundle(options: CreateBundleOptions): Promise<CreatedBundle> {
  const { rootfs, out, privateKey, metadata, signal } = options;
  const chunkSize = options.chunkSize ?? defaultChunkSize;
  const progress = options.onProgress ?? (() => {});
  let info;
  try {
    info = await stat(rootfs);
  } catch (cause) {
    throw new KubeosError('E_USAGE', `cannot read rootfs ${rootfs}`, { cause, details: { path: rootfs } });
  }
  if (!info.isFile()) throw new KubeosError('E_USAGE', `rootfs ${rootfs} is not a regular file`, { details: { path: rootfs } });
  const epoch = options.sourceDateEpoch ?? Math.floor(info.mtimeMs / 1000);
  const created = new Date(epoch * 1000);

  const payloadTemp = `${out}.payload-${process.pid}.tmp`;
  const bundleTemp = `${out}.partial-${process.pid}.tmp`;
  try {
    const compressed = new HashTap();
    const form = options.index ?? 'object';
    const chunker = form === 'none' ? undefined : new Chunker(defaultCdcRule);
    const keyId = keyIdOf(privateKey);
    const describe = (payload: BundleManifest['payload']): BundleManifest => ({
      format: bundleFormat,
      ...metadata,
      created: created.toISOString().replace('.000Z', 'Z'),
      keyId,
      payload,
    });
    // Where zstd writes: guessed from a manifest of the final shape with likely numbers (zstd -3
    // makes root images some 40% of their size; content-defined chunks average about min + avg).
    // Only those numbers are not known yet, and they change the manifest by a digit or two, while
    // a tar member takes whole 512-byte blocks: the guess is nearly always the final offset. An
    // ed25519 signature's length does not depend on what it signs.
    const signatureLength = Buffer.byteLength(canonicalJson(signBytes(privateKey, Buffer.alloc(0))));
    const likelyChunks = Math.ceil(info.size / (defaultCdcRule.min + defaultCdcRule.avg));
    const payloadAt = options.payloadOffset ?? payloadOffsetOf(describe({
      compression: 'zstd',
      size: Math.round(info.size * 0.4),
      sha256: someSha256,
      uncompressedSize: info.size,
      uncompressedSha256: someSha256,
      chunkSize,
      chunks: new Array<string>(Math.ceil(info.size / chunkSize)).fill(someSha256),
      ...(form === 'object' ? { indexObject: { rule: { ...defaultCdcRule }, chunkCount: likelyChunks, size: indexObjectBytes(likelyChunks), sha256: someSha256 } } : {}),
    }), signatureLength);
    // zstd reads the file, the worker hashes it, and this thread cuts the delta index (content-
    // defined chunks) from a read of its own; the stat check below ties the three together. The
    // first of them to fail stops the others (they would each read the whole image for nothing).
    const stop = new AbortController();
    const onAbort = () => stop.abort(signal?.reason);
    signal?.addEventListener('abort', onAbort, { once: true });
    let first: { index: number; error: unknown } | undefined;
    const stopOthers = <T>(index: number, work: Promise<T>): Promise<T> => work.catch((error: unknown) => {
      if (first === undefined) {
        first = { index, error };
        stop.abort(error);
      }
      throw error;
    });
    const child = await startZstd(zstdCompressArgs(rootfs), { signal: stop.signal, timeoutMs: zstdTimeoutMs });
    child.stdin.end();
    const indexing = chunker === undefined ? Promise.resolve([]) : indexImageFile(rootfs, chunker, stop.signal);
    const results = await Promise.allSettled([
      stopOthers(0, hashImageFile(rootfs, chunkSize, { signal: stop.signal, onBytes: (bytes) => progress('compress', bytes / info.size, { done: bytes, total: info.size }) })),
      stopOthers(1, pipeline(child.stdout, compressed, createWriteStream(bundleTemp, { start: payloadAt }), { signal: stop.signal })),
      stopOthers(2, indexing),
    ]);
    signal?.removeEventListener('abort', onAbort);
    const exit = await child.exited;
    signal?.throwIfAborted();
    // the first failure is the cause; the others were stopped by it
    const failed = first as { index: number; error: unknown } | undefined;
    if (failed?.index === 1) {
      // a write that failed stops zstd (SIGPIPE): name the output, not "zstd failed: exit by signal"
      const code = (failed.error as NodeJS.ErrnoException).code;
      throw new KubeosError('E_OUTPUT', `cannot write the bundle ${out}: ${code ?? String(failed.error)}`, {
        cause: failed.error,
        hint: code === 'ENOENT' ? `create the directory ${dirname(out)} first` : code === 'EACCES' || code === 'EROFS' ? `${dirname(out)} is not writable here: choose another --out` : undefined,
        details: { out, code },
      });
    }
    if (failed?.index === 0) throw failed.error;
    if (failed?.index === 2) throw new KubeosError('E_USAGE', `cannot read rootfs ${rootfs}: ${(failed.error as NodeJS.ErrnoException).code ?? String(failed.error)}`, { cause: failed.error, details: { path: rootfs } });
    if (exit.exitCode !== 0) {
      throw new KubeosError('E_TOOL_FAILED', `zstd failed: ${exit.stderr || `exit ${exit.exitCode ?? 'by signal'}`}`, { details: { tool: 'zstd', stderr: exit.stderr } });
    }
    const hashed = results[0];
    if (hashed.status === 'rejected') throw hashed.reason;
    const hashes = hashed.value;
    const indexed = results[2].status === 'fulfilled' ? results[2].value : [];
    const indexedBytes = indexed.reduce((sum, c) => sum + c.length, 0);
    const after = await stat(rootfs);
    if (hashes.bytes !== info.size || (chunker !== undefined && indexedBytes !== info.size) || after.size !== info.size || after.mtimeMs !== info.mtimeMs || after.ino !== info.ino) {
      throw new KubeosError('E_USAGE', `rootfs ${rootfs} changed while it was read`, { hint: 'bundle an image nothing writes to (kubeos build\'s rootfs.img once the build is done)', details: { path: rootfs } });
    }

    const index: ChunkIndexInfo | undefined = chunker === undefined ? undefined : { rule: { ...defaultCdcRule }, chunks: indexed.map((c) => [c.length, c.sha256]) };
    const manifest: BundleManifest = validateManifest(describe({
      compression: 'zstd',
      size: compressed.bytes,
      sha256: compressed.digest(),
      uncompressedSize: hashes.bytes,
      uncompressedSha256: hashes.sha256,
      chunkSize,
      chunks: hashes.chunks,
      ...(index === undefined ? {} : form === 'object' ? { indexObject: describeIndexObject(index).info } : { index }),
    }));
    const manifestBytes = Buffer.from(canonicalJson(manifest));
    if (manifestBytes.length > maxManifestBytes) {
      // the limit is every host's, today's included: a bigger manifest would install nowhere
      throw new KubeosError('E_USAGE', `the manifest of ${rootfs} would be ${manifestBytes.length} bytes, over the ${maxManifestBytes} every host reads`, {
        hint: form === 'inline' ? 'the inline chunk index grows with the image (about 80 bytes a 64 KiB chunk): sign an index object instead' : 'the image is too big for one bundle',
        details: { bytes: manifestBytes.length, limit: maxManifestBytes },
      });
    }
    const signatureBytes = Buffer.from(canonicalJson(signBytes(privateKey, manifestBytes)));

    progress('write bundle');
    // the headers go around the payload where it is, or, guessed wrong, the payload is copied
    const copiedPayload = payloadOffsetOf(manifest, signatureBytes.length) !== payloadAt;
    if (copiedPayload) await rename(bundleTemp, payloadTemp);
    const payloadEnd = payloadAt + compressed.bytes;
    const pack = tar.pack();
    const whole = new HashTap();
    const writing = pipeline(pack, whole, copiedPayload ? createWriteStream(bundleTemp) : new WriteAroundPayload(bundleTemp, payloadAt, payloadEnd), { signal });
    // Fixed owner, mode and mtime: the tar headers are as reproducible as the contents.
    const header = (name: string, size: number) => ({ name, size, mode: 0o644, mtime: created, uid: 0, gid: 0, uname: '', gname: '', type: 'file' as const });
    try {
      await pipeline(Readable.from([manifestBytes]), pack.entry(header(manifestMember, manifestBytes.length)));
      await pipeline(Readable.from([signatureBytes]), pack.entry(header(signatureMember, signatureBytes.length)));
      const payload = compressed.bytes === 0 ? Readable.from([]) : createReadStream(copiedPayload ? payloadTemp : bundleTemp, { start: payloadAt, end: payloadEnd - 1, highWaterMark: copyReadBytes });
      await pipeline(payload, pack.entry(header(payloadMember, compressed.bytes)), { signal });
      pack.finalize();
    } catch (error) {
      pack.destroy(error as Error);
      await writing.catch(() => {});
      throw error;
    }
    await writing;
    await rename(bundleTemp, out);
    progress('done');
    return { path: out, manifest, ...(index === undefined ? {} : { index }), size: whole.bytes, sha256: whole.digest(), copiedPayload };
  } catch (error) {
    if (error instanceof KubeosError) throw error;
    if (signal?.aborted) throw signal.reason;
    throw new KubeosError('E_OUTPUT', `creating bundle ${out} failed: ${(error as Error).message}`, { cause: error, details: { path: out } });
  } finally {
    await rm(payloadTemp, { force: true });
    await rm(bundleTemp, { force: true });
  }
}
