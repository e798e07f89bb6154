/**
 * `kubeos bundle diff`: what a host running OLD would download to get NEW if it fetched only the
 * chunks its slot does not already hold. Each side is a bundle (its payload decompressed by the
 * agent's own reader) or a rootfs image. OLD is indexed first; NEW is then streamed once, and the
 * bytes of its missing chunks go to zstd as they pass, for a compressed estimate. Nothing is kept
 * but the two indexes and at most one chunk's bytes.
 *
 * For a NEW bundle the header a host reads before any chunk is counted too: the bundle's own
 * header as the agent reads it (the same Range reads, from the file), and the index object when
 * the manifest names one (NEW's index as cut here, checked against the signed size and sha256,
 * at the chunk store's zstd level).
 */
import { createReadStream } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Chunker, defaultCdcRule, indexStream, type Chunk, type ChunkRule } from '../../runtime/core/bundle/chunk-index.js';
import { encodeChunkIndex, openIndexObject } from '../../runtime/core/bundle/chunk-index-object.js';
import { ChunkDiffer, type ChunkDiff } from '../../runtime/core/bundle/diff-chunk-indexes.js';
import { manifestMember, type BundleManifest, type IndexedChunk } from '../../runtime/core/bundle/manifest.js';
import { readHeaderPrefix } from '../../runtime/core/bundle/measure-bundle-header.js';
import { readBundle, readUnsignedBundle } from '../../runtime/core/bundle/read-bundle.js';
import { startZstd } from '../../runtime/core/bundle/run-zstd.js';
import type { TrustedKeys } from '../../runtime/core/crypto/keys.js';
import { isKubeosError, KubeosError } from '../../runtime/core/errors.js';
import { filesystemOf } from './check-rootfs.js';
import { zstdLevel } from './create-bundle.js';
import { chunkZstdLevel } from './write-chunk-files.js';

export type DiffRole = 'OLD' | 'NEW';

export interface DiffSide {
  path: string;
  kind: 'bundle' | 'image';
  /** Bytes of the (uncompressed) image. */
  imageBytes: number;
  /** Size of the bundle file, for a bundle. */
  bundleBytes?: number;
  version?: string;
  /** For a bundle: true when its signature was checked against --pubkey (its hashes are always checked). */
  verified?: boolean;
}

export interface ImageDiff extends ChunkDiff {
  old: DiffSide;
  new: DiffSide;
  rule: ChunkRule;
  /** zstd of the missing chunks as one stream; chunks compressed one by one would come out somewhat larger. */
  missingCompressed?: number;
  /** What a host downloads today: NEW's bundle file, or zstd of NEW's whole image when NEW is an image (estimated). */
  fullBundle?: { bytes: number; estimated: boolean };
  /**
   * For a NEW bundle, what a delta host reads before any chunk: `bundleBytes` of the bundle (its
   * header, by the agent's Range reads: at least the first 64 KiB), and `indexObjectBytes`, the
   * index object's zstd frame, when the manifest names one (an inline index is in the header).
   */
  header?: { bundleBytes: number; indexObjectBytes?: number };
}

export interface DiffOptions {
  rule?: ChunkRule;
  /** Check bundle signatures against these keys; without them a bundle is read unverified (its hashes still checked). */
  trustedKeys?: TrustedKeys;
  /** Compress the missing chunks (and NEW's image, when it is not a bundle) with zstd for the estimates. Default true. */
  compress?: boolean;
  signal?: AbortSignal;
  onProgress?: (step: string, fraction?: number, bytes?: { done: number; total: number }) => void;
}

const hint = 'give a bundle file (kubeos bundle create) or a rootfs image (rootfs.img from kubeos build)';
const zstdTimeoutMs = 6 * 60 * 60 * 1000;
const firstNameField = Buffer.concat([Buffer.from(manifestMember), Buffer.alloc(100 - manifestMember.length)]);

/** What the input is, from its first bytes: refuses a missing file, a directory and anything else by name. */
export async function classifyInput(role: DiffRole, path: string): Promise<{ kind: 'bundle' | 'image'; size: number }> {
  const handle = await open(path, 'r').catch((cause: unknown) => {
    throw new KubeosError('E_USAGE', `${role} ${path}: cannot read it (${(cause as NodeJS.ErrnoException).code ?? String(cause)})`, { cause, hint, details: { role, path } });
  });
  try {
    const stats = await handle.stat();
    if (!stats.isFile()) throw new KubeosError('E_USAGE', `${role} ${path} is a directory, not a bundle or an image file`, { hint, details: { role, path } });
    const head = Buffer.alloc(2048);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    const seen = head.subarray(0, bytesRead);
    if (seen.length >= 100 && seen.subarray(0, 100).equals(firstNameField)) return { kind: 'bundle', size: stats.size };
    if (filesystemOf(seen) !== undefined) return { kind: 'image', size: stats.size };
    throw new KubeosError('E_USAGE', `${role} ${path} is neither a kubeos bundle nor an ext4 or squashfs image (${seen.length === 0 ? 'it is empty' : 'no bundle header, no filesystem superblock'})`, {
      hint,
      details: { role, path },
    });
  } finally {
    await handle.close();
  }
}

/** The image bytes of one side, what it is, and a bundle's manifest. */
async function openSide(role: DiffRole, path: string, options: DiffOptions): Promise<{ side: DiffSide; image: Readable; manifest?: BundleManifest }> {
  const { kind, size } = await classifyInput(role, path);
  if (kind === 'image') {
    return { side: { path, kind, imageBytes: size }, image: createReadStream(path, { highWaterMark: 1 << 20, signal: options.signal }) };
  }
  const source = createReadStream(path, { highWaterMark: 1 << 20 });
  try {
    const verified = options.trustedKeys !== undefined;
    const opened = options.trustedKeys !== undefined
      ? await readBundle(source, { trustedKeys: options.trustedKeys, chunksOnly: true, signal: options.signal })
      : await readUnsignedBundle(source, { signal: options.signal });
    const { manifest } = opened;
    return { side: { path, kind, imageBytes: manifest.payload.uncompressedSize, bundleBytes: size, version: manifest.version, verified }, image: opened.payload, manifest };
  } catch (error) {
    source.destroy();
    throw named(role, path, error);
  }
}

/** A reader's error with the input it came from in front of its message. */
function named(role: DiffRole, path: string, error: unknown): unknown {
  if (!isKubeosError(error) || error.message.startsWith(`${role} `)) return error;
  return new KubeosError(error.code, `${role} ${path}: ${error.message}`, { cause: error, hint: error.hint, details: { ...error.details, role, path } });
}

/** Counts progress through one side's image as it streams. */
function counted(image: Readable, total: number, step: string, options: DiffOptions): AsyncIterable<Buffer> {
  let done = 0;
  return (async function* () {
    for await (const data of image as AsyncIterable<Buffer>) {
      done += data.length;
      options.onProgress?.(step, total === 0 ? 1 : done / total, { done, total });
      yield data;
    }
  })();
}

/**
 * The bytes of each missing chunk of `source`, in order, while the index is built: held pieces
 * are dropped once a chunk ends after them, so memory stays at one chunk plus one piece.
 */
async function* missingChunkBytes(source: AsyncIterable<Buffer>, chunker: Chunker, differ: ChunkDiffer, index: IndexedChunk[]): AsyncGenerator<Buffer> {
  const held: Buffer[] = [];
  let heldStart = 0;
  const cut = (chunk: Chunk): Buffer => {
    const parts: Buffer[] = [];
    let at = heldStart;
    for (const piece of held) {
      const from = Math.max(chunk.offset, at);
      const to = Math.min(chunk.offset + chunk.length, at + piece.length);
      if (from < to) parts.push(piece.subarray(from - at, to - at));
      at += piece.length;
    }
    return Buffer.concat(parts);
  };
  const drop = (end: number) => {
    while (held.length > 0 && heldStart + held[0]!.length <= end) heldStart += held.shift()!.length;
  };
  function* take(chunks: Chunk[]): Generator<Buffer> {
    for (const chunk of chunks) {
      index.push([chunk.length, chunk.sha256]);
      if (differ.add(chunk)) yield cut(chunk);
    }
    const last = chunks.at(-1);
    if (last !== undefined) drop(last.offset + last.length);
  }
  for await (const data of source) {
    held.push(data);
    yield* take(chunker.push(data));
  }
  yield* take(chunker.finish());
}

/** Bytes a delta host reads of a bundle file for its header (the agent's reads, from a file). */
async function hostHeaderBytes(path: string): Promise<number | undefined> {
  const handle: FileHandle = await open(path, 'r');
  try {
    const read = await readHeaderPrefix(async (offset, length) => {
      const buffer = Buffer.alloc(length);
      const { bytesRead } = await handle.read(buffer, 0, length, offset);
      return buffer.subarray(0, bytesRead);
    });
    return read?.prefix.length;
  } finally {
    await handle.close();
  }
}

/** The index object a host would fetch for NEW: cut here, it must be the one signed; its size at the chunk store's level. */
async function indexObjectBytes(manifest: BundleManifest, index: IndexedChunk[], rule: ChunkRule, signal: AbortSignal | undefined): Promise<number | undefined> {
  const signed = manifest.payload.indexObject;
  if (signed === undefined) return undefined;
  const sameRule = rule.kind === 'cdc' && rule.min === signed.rule.min && rule.avg === signed.rule.avg && rule.max === signed.rule.max;
  if (!sameRule) return undefined;
  const bytes = encodeChunkIndex(index);
  openIndexObject(bytes, signed, manifest.payload.uncompressedSize);
  // as the chunk store holds it: a file compressed by write-index-object.ts
  return compressedSize(Readable.from([bytes]), chunkZstdLevel, signal, bytes.length);
}

/** Bytes zstd makes of `input` at `level`; with `streamSize` (the input's exact size) the frame is byte for byte what zstd makes of a file of it. */
async function compressedSize(input: AsyncIterable<Buffer> | Readable, level: number, signal: AbortSignal | undefined, streamSize?: number): Promise<number> {
  const child = await startZstd([`-${level}`, '-T0', '-c', '-q', '--no-progress', ...(streamSize === undefined ? [] : [`--stream-size=${streamSize}`])], { signal, timeoutMs: zstdTimeoutMs });
  let bytes = 0;
  child.stdout.on('data', (data: Buffer) => {
    bytes += data.length;
  });
  const fed = pipeline(input instanceof Readable ? input : Readable.from(input), child.stdin).then(() => undefined, (error: unknown) => error);
  const exit = await child.exited;
  const feedError = await fed;
  if (feedError !== undefined) throw feedError;
  if (exit.exitCode !== 0) throw new KubeosError('E_TOOL_FAILED', `zstd failed: ${exit.stderr || `exit ${exit.exitCode ?? 'by signal'}`}`, { details: { tool: 'zstd', stderr: exit.stderr } });
  return bytes;
}

export async function diffImages(oldPath: string, newPath: string, options: DiffOptions = {}): Promise<ImageDiff> {
  const rule = options.rule ?? defaultCdcRule;
  const compress = options.compress ?? true;
  // both inputs are checked before either is read, so a bad NEW does not wait for OLD's indexing
  await classifyInput('OLD', oldPath);
  await classifyInput('NEW', newPath);

  const old = await openSide('OLD', oldPath, options);
  let held: Chunk[];
  try {
    held = await indexStream(counted(old.image, old.side.imageBytes, 'indexing OLD', options), rule);
  } catch (error) {
    throw named('OLD', oldPath, error);
  } finally {
    old.image.destroy();
  }

  const fresh = await openSide('NEW', newPath, options);
  const differ = new ChunkDiffer(held);
  const index: IndexedChunk[] = [];
  const missing = missingChunkBytes(counted(fresh.image, fresh.side.imageBytes, 'indexing NEW', options), new Chunker(rule), differ, index);
  let missingCompressed: number | undefined;
  let fullBundle: ImageDiff['fullBundle'];
  try {
    if (compress) {
      const [part, whole] = await Promise.all([
        // the missing chunks at the chunk store's level, the whole image at the bundle's
        compressedSize(missing, chunkZstdLevel, options.signal),
        fresh.side.kind === 'image' ? compressedSize(createReadStream(newPath, { highWaterMark: 1 << 20 }), zstdLevel, options.signal) : undefined,
      ]);
      missingCompressed = part;
      if (whole !== undefined) fullBundle = { bytes: whole, estimated: true };
    } else {
      // the index is all that is wanted: the missing bytes pass unused
      for await (const bytes of missing) void bytes;
    }
  } catch (error) {
    throw named('NEW', newPath, error);
  } finally {
    fresh.image.destroy();
  }
  if (fresh.side.bundleBytes !== undefined) fullBundle = { bytes: fresh.side.bundleBytes, estimated: false };
  let header: ImageDiff['header'];
  const { index: inline, indexObject } = fresh.manifest?.payload ?? {};
  if (fresh.manifest !== undefined && (inline !== undefined || indexObject !== undefined)) {
    try {
      const bundleBytes = await hostHeaderBytes(newPath);
      const objectBytes = compress ? await indexObjectBytes(fresh.manifest, index, rule, options.signal) : undefined;
      if (bundleBytes !== undefined) header = { bundleBytes, ...(objectBytes === undefined ? {} : { indexObjectBytes: objectBytes }) };
    } catch (error) {
      throw named('NEW', newPath, error);
    }
  }
  return {
    old: old.side, new: fresh.side, rule, ...differ.result(),
    ...(missingCompressed === undefined ? {} : { missingCompressed }), ...(fullBundle === undefined ? {} : { fullBundle }), ...(header === undefined ? {} : { header }),
  };
}
