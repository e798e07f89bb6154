/**
 * Applies one tar layer to a staging tree, the way container runtimes do: `.wh.NAME` deletes NAME
 * from the layers below, `.wh..wh..opq` empties a directory of what the layers below put there,
 * hard links, symlinks and devices are honoured, and every entry's owner, mode, device numbers,
 * xattrs and mtime go into the tree's MetaList (the tree itself is written as the current user).
 * Layers stream through: nothing holds a layer in memory. Names that would leave the root are
 * refused (E_SOURCE_HOSTILE), and a layer whose bytes do not match its manifest fails
 * (E_HASH_MISMATCH, E_SOURCE_TRUNCATED) — a failed build's staging tree is thrown away.
 */
import { chmodSync, closeSync, fchmodSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, renameSync, symlinkSync, writeSync } from 'node:fs';
import type { Stats } from 'node:fs';
import { lstat, readdir, rmdir, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable, Duplex } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { KubeosError, isKubeosError } from '../../runtime/core/errors.js';
import { OffThreadHashTap } from '../../runtime/core/bundle/stream-hasher.js';
import { deviceNumberProblem, stagedMode, type FileKind, type FileMeta, type MetaList } from './file-meta.js';
import { HashTap, openDecompressor, peek } from './open-layer.js';
import { RewritePax } from './rewrite-pax.js';
import { checkSymlinkTarget, entrySegments, resolveInRoot } from './safe-path.js';
import type { CoveredEntries } from './find-covered-entries.js';

export type TarEntry = tar.ExtractEvents['entry'][1];

export interface StagingTree {
  root: string;
  meta: MetaList;
  /** Lexical directory path → physical one, for directories known to exist. */
  dirs: Map<string, string[]>;
  /**
   * An empty directory on the root's filesystem, outside it, where removed paths are moved
   * instead of deleted; the caller deletes it later. Deleting frees inodes, and for minutes
   * after, ext4 reads every recently freed inode again on each create (recently_deleted() in
   * ialloc.c): a layer that whites out a directory and then adds files spent a third of its
   * time there. Unset: removed paths are deleted.
   */
  removed?: { dir: string; count: number };
}

export function newStagingTree(root: string, removedDir?: string): StagingTree {
  return { root, meta: new Map(), dirs: new Map(), ...(removedDir === undefined ? {} : { removed: { dir: removedDir, count: 0 } }) };
}

/** What a layer's bytes must match: the manifest's digest and size of the blob, the config's diff_id of the tar. */
export interface LayerCheck {
  digest?: string;
  size?: number;
  diffId?: string;
}

const impliedDir: Omit<FileMeta, 'mtime'> = { kind: 'dir', mode: 0o755, uid: 0, gid: 0 };

function invalid(message: string, where: string, cause?: unknown): KubeosError {
  return new KubeosError('E_SOURCE_INVALID', message, { cause, details: { where } });
}

/*
 * Entries are written with synchronous calls: a layer is thousands of small files, and each
 * promise-based call (lstat, open, write, close, chmod) cost a round trip through the thread pool
 * that took longer than the system call itself. The layer's bytes keep streaming in meanwhile.
 */
function lstatOrUndefined(path: string): Stats | undefined {
  return lstatSync(path, { throwIfNoEntry: false });
}

/** Creates `path` (it must not exist), writes what `data` yields and gives it `mode`. */
async function writeNewFile(path: string, data: AsyncIterable<unknown> | Iterable<unknown>, mode: number): Promise<void> {
  const fd = openSync(path, 'wx', 0o600);
  try {
    for await (const part of data) {
      const chunk = part as Buffer;
      for (let at = 0; at < chunk.length;) at += writeSync(fd, chunk, at);
    }
    fchmodSync(fd, mode);
  } finally {
    closeSync(fd);
  }
}

/** Physical segments of a directory, created (as an implied root-owned 0755 directory) where missing. */
async function ensureDir(tree: StagingTree, segments: string[], where: string): Promise<string[]> {
  const key = segments.join('/');
  const known = tree.dirs.get(key);
  if (known !== undefined) return known;
  const physical = resolveInRoot(tree.root, segments, where);
  for (let i = 1; i <= physical.length; i++) {
    const rel = physical.slice(0, i).join('/');
    const info = lstatOrUndefined(join(tree.root, rel));
    if (info === undefined) {
      mkdirSync(join(tree.root, rel), { mode: 0o755 });
      chmodSync(join(tree.root, rel), 0o755);
      if (!tree.meta.has(rel)) tree.meta.set(rel, { ...impliedDir, mtime: undefined });
    } else if (!info.isDirectory()) {
      throw invalid(`${where}: ${segments.join('/')} needs ${rel} to be a directory, but the archive made it a file`, where);
    }
  }
  tree.dirs.set(key, physical);
  return physical;
}

/** Moves `rel` into the tree's removed directory; false when there is none or it cannot be used. */
function moveAside(tree: StagingTree, rel: string, stats: Stats): boolean {
  const removed = tree.removed;
  if (removed === undefined) return false;
  const path = join(tree.root, rel);
  // the names under a directory, read before it goes: their MetaList entries go with it
  const below = stats.isDirectory() ? readdirSync(path, { recursive: true, encoding: 'utf8' }) : [];
  try {
    renameSync(path, join(removed.dir, String(removed.count++)));
  } catch {
    // another filesystem, or the directory is gone: delete from now on
    tree.removed = undefined;
    return false;
  }
  for (const name of below) tree.meta.delete(`${rel}/${name}`);
  tree.meta.delete(rel);
  if (stats.isDirectory() || stats.isSymbolicLink()) tree.dirs.clear();
  return true;
}

/** Removes a path and everything under it, from the tree and from its MetaList. */
export async function removePath(tree: StagingTree, rel: string, info?: Stats): Promise<void> {
  const path = join(tree.root, rel);
  const stats = info ?? lstatOrUndefined(path);
  if (stats === undefined) return;
  if (rel !== '' && moveAside(tree, rel, stats)) return;
  if (stats.isDirectory()) {
    for (const name of await readdir(path)) await removePath(tree, `${rel}/${name}`);
    await rmdir(path);
    tree.dirs.clear();
  } else {
    await unlink(path);
    if (stats.isSymbolicLink()) tree.dirs.clear();
  }
  tree.meta.delete(rel);
}

/** `.wh..wh..opq`: what lower layers put in `dir` goes; what this layer wrote stays. */
async function makeOpaque(tree: StagingTree, dir: string, written: Set<string>): Promise<void> {
  for (const name of (await readdir(join(tree.root, dir))).sort()) {
    const rel = dir === '' ? name : `${dir}/${name}`;
    if (!written.has(rel)) {
      await removePath(tree, rel);
    } else if ((await lstat(join(tree.root, rel))).isDirectory()) {
      await makeOpaque(tree, rel, written);
    }
  }
}

/** undefined: a typeflag tar-stream does not know (GNU sparse 'S', multi-volume 'M', ...). */
function kindOf(type: tar.Header['type'] | undefined | null): FileKind | 'link' | undefined {
  switch (type) {
    case 'file': case 'contiguous-file': case undefined: return 'file';
    case 'directory': return 'dir';
    case 'symlink': return 'symlink';
    case 'link': return 'link';
    case 'character-device': return 'char';
    case 'block-device': return 'block';
    case 'fifo': return 'fifo';
    default: return undefined;
  }
}

/** xattrs from PAX records: SCHILY.xattr.NAME (text), or libarchive's base64 LIBARCHIVE.xattr.NAME. */
export function xattrsOf(pax: Record<string, string> | null | undefined, path: string, where: string): Record<string, Buffer> | undefined {
  if (pax === undefined || pax === null) return undefined;
  const xattrs: Record<string, Buffer> = {};
  for (const [key, value] of Object.entries(pax)) {
    if (key.startsWith('LIBARCHIVE.xattr.')) xattrs[decodeURIComponent(key.slice(17))] = Buffer.from(value, 'base64');
  }
  for (const [key, value] of Object.entries(pax)) {
    if (!key.startsWith('SCHILY.xattr.')) continue;
    const name = key.slice(13);
    if (xattrs[name] !== undefined) continue;
    // tar-stream decodes PAX values as UTF-8: a binary value would arrive altered
    if (value.includes('\uFFFD')) {
      throw invalid(`${where}: ${path}: xattr ${name} holds binary data that cannot be read exactly from a SCHILY.xattr record`, where);
    }
    xattrs[name] = Buffer.from(value, 'utf8');
  }
  return Object.keys(xattrs).length > 0 ? xattrs : undefined;
}

async function drain(entry: AsyncIterable<unknown>): Promise<void> {
  for await (const _chunk of entry) {
    // discard
  }
}

const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/** A name as bytes, printable: ASCII as is, other bytes as \xNN. */
function escapeBytes(bytes: Buffer): string {
  return [...bytes].map((b) => (b >= 0x20 && b < 0x7f && b !== 0x5c ? String.fromCharCode(b) : `\\x${b.toString(16).padStart(2, '0')}`)).join('');
}

/**
 * Header names are read as latin1, i.e. as their bytes, and must be UTF-8: decoding them as UTF-8
 * straight away turned each invalid byte into U+FFFD, so two names differing in one such byte
 * became one file. A name from a PAX record is UTF-8 by definition; tar-stream has already decoded
 * it, and U+FFFD there is the same loss.
 */
function entryName(value: string, fromPax: boolean, what: string, where: string): string {
  if (fromPax) {
    if (value.includes('\uFFFD')) throw invalid(`${where}: the ${what} ${JSON.stringify(value)} in a PAX record is not valid UTF-8; rename it in the source`, where);
    return value;
  }
  const bytes = Buffer.from(value, 'latin1');
  try {
    return strictUtf8.decode(bytes);
  } catch {
    throw invalid(`${where}: the ${what} "${escapeBytes(bytes)}" is not UTF-8; rename it in the source (kubeos keeps names exact, and these bytes would not be)`, where);
  }
}

/**
 * Whether an entry would be written at the path it names, over nothing or over a plain file or
 * directory: no symlink on the way or in its place, which could send later layers' writes
 * elsewhere (see find-covered-entries.ts).
 */
function landsAsNamed(tree: StagingTree, segments: string[], where: string): boolean {
  const parent = segments.slice(0, -1);
  const physical = tree.dirs.get(parent.join('/')) ?? resolveInRoot(tree.root, parent, where);
  if (physical.length !== parent.length || physical.some((segment, i) => segment !== parent[i])) return false;
  return lstatOrUndefined(join(tree.root, ...segments))?.isSymbolicLink() !== true;
}

/** Decodes a header's name and link target (read as latin1) in place; the name's segments. */
export function decodeEntryNames(header: tar.Header & { pax?: Record<string, string> | null }, where: string): string[] {
  header.name = entryName(header.name, header.pax?.['path'] !== undefined, 'entry name', where);
  if (header.linkname) header.linkname = entryName(header.linkname, header.pax?.['linkpath'] !== undefined, `link target of ${header.name}`, where);
  return entrySegments(header.name, 'entry', where);
}

/** What of an entry find-covered-entries.ts relies on: its whiteout, opaque marker or hard link target; or nothing. */
export function entryMark(segments: readonly string[], type: string | null | undefined, linkname: string | null | undefined): string | undefined {
  const base = segments.at(-1);
  if (type === 'link') return `link ${(linkname ?? '').split('/').filter((s) => s !== '' && s !== '.').at(-1) ?? ''}`;
  if (base === '.wh..wh..opq') return `opaque ${segments.slice(0, -1).join('/')}`;
  if (base?.startsWith('.wh.') === true) return `whiteout ${[...segments.slice(0, -1), base.slice(4)].join('/')}`;
  return undefined;
}

async function applyEntry(tree: StagingTree, entry: TarEntry, written: Set<string>, where: string, covered?: CoveredEntries, marks?: string[]): Promise<void> {
  const header = entry.header as tar.Header & { pax?: Record<string, string> | null };
  const segments = decodeEntryNames(header, where);
  const mark = marks === undefined ? undefined : entryMark(segments, header.type, header.linkname);
  if (mark !== undefined) marks?.push(mark);
  const kind = kindOf(header.type);
  if (kind === undefined) {
    throw invalid(`${where}: entry ${header.name} has a tar type kubeos does not handle (a GNU sparse or multi-volume entry?); repack the source without sparse files (tar --no-sparse, or GNU tar without -S)`, where);
  }
  if (Object.keys(header.pax ?? {}).some((key) => key.startsWith('GNU.sparse.'))) {
    throw invalid(`${where}: entry ${header.name} is a PAX sparse file (GNU.sparse.* records), whose data would land wrong; repack the source without sparse files`, where);
  }
  const base = segments.at(-1);
  if (covered !== undefined && base !== undefined && !base.startsWith('.wh.') && kind !== 'symlink' && covered.isCovered(segments, kind) && landsAsNamed(tree, segments, where)) {
    await drain(entry);
    return;
  }
  const parent = await ensureDir(tree, segments.slice(0, -1), where);
  const rel = base === undefined ? '' : [...parent, base].join('/');

  if (base?.startsWith('.wh.')) {
    await drain(entry);
    if (base === '.wh..wh..opq') return makeOpaque(tree, parent.join('/'), written);
    const name = base.slice(4);
    if (name === '' || name === '.' || name === '..' || name.includes('/')) throw invalid(`${where}: whiteout ${header.name} names no file`, where);
    return removePath(tree, [...parent, name].join('/'));
  }

  const path = join(tree.root, rel);
  const meta: FileMeta = {
    kind: kind === 'link' ? 'file' : kind,
    mode: (header.mode ?? 0o644) & 0o7777,
    uid: header.uid ?? 0,
    gid: header.gid ?? 0,
    mtime: header.mtime === undefined ? undefined : Math.floor(header.mtime.getTime() / 1000),
  };
  const xattrs = xattrsOf(header.pax, rel, where);
  if (xattrs !== undefined) meta.xattrs = xattrs;
  if (kind === 'char' || kind === 'block') {
    meta.rdev = [header.devmajor ?? 0, header.devminor ?? 0];
    const problem = deviceNumberProblem(meta.rdev);
    if (problem !== undefined) throw invalid(`${where}: device node ${header.name}: ${problem}; fix or remove that entry`, where);
  }

  const existing = rel === '' ? lstatSync(path) : lstatOrUndefined(path);
  if (existing !== undefined && !(kind === 'dir' && existing.isDirectory())) await removePath(tree, rel, existing);

  switch (kind) {
    case 'dir':
      if (existing === undefined || !existing.isDirectory()) mkdirSync(path);
      chmodSync(path, stagedMode(meta));
      await drain(entry);
      break;
    case 'file':
      await writeNewFile(path, entry, stagedMode(meta));
      break;
    case 'symlink': {
      await drain(entry);
      const target = header.linkname ?? '';
      if (target === '') throw invalid(`${where}: symlink ${rel} has no target`, where);
      checkSymlinkTarget(parent, target, rel, where);
      symlinkSync(target, path);
      break;
    }
    case 'link': {
      await drain(entry);
      const targetSegments = entrySegments(header.linkname ?? '', 'hard link target', where);
      const last = targetSegments.at(-1);
      if (last === undefined) throw invalid(`${where}: hard link ${rel} names no target`, where);
      const targetRel = [...resolveInRoot(tree.root, targetSegments.slice(0, -1), where), last].join('/');
      const target = lstatOrUndefined(join(tree.root, targetRel));
      if (target === undefined || target.isDirectory()) {
        throw invalid(`${where}: hard link ${rel} points to ${header.linkname ?? ''}, which is ${target === undefined ? 'not in the archive before it' : 'a directory'}`, where);
      }
      linkSync(join(tree.root, targetRel), path);
      const shared = tree.meta.get(targetRel);
      written.add(rel);
      if (shared !== undefined) tree.meta.set(rel, shared);
      return;
    }
    default:
      // devices and FIFOs: an empty placeholder here, the real node in the filesystem image
      await drain(entry);
      await writeNewFile(path, [], 0o600);
  }
  written.add(rel);
  tree.meta.set(rel, meta);
}

const offThreadHashBytes = 8 << 20;

/** Whether a layer's digest is taken on a worker (a big or unknown size) or on this thread. */
export function hashesOffThread(check: LayerCheck): boolean {
  return check.size === undefined || check.size >= offThreadHashBytes;
}

function mapStreamError(error: unknown, where: string): KubeosError {
  if (error instanceof KubeosError) return error;
  const e = error as NodeJS.ErrnoException;
  if (e.code === 'Z_BUF_ERROR' || /unexpected end/i.test(e.message ?? '')) {
    return new KubeosError('E_SOURCE_TRUNCATED', `${where} ends before its last entry is complete`, { cause: error, hint: 'the archive is truncated: copy or download it again', details: { where } });
  }
  return invalid(`${where} cannot be read as a tar layer: ${e.message ?? String(error)}`, where, error);
}

/**
 * Streams `raw` (a plain, gzip or zstd tar) into the tree, then checks it against `check`.
 * Entries are applied in archive order; the MetaList ends up with what the last layer said.
 */
export async function applyLayer(tree: StagingTree, raw: Readable, where: string, check: LayerCheck = {}, signal?: AbortSignal, covered?: CoveredEntries): Promise<void> {
  // a big layer's digest on a worker, beside the unpacking (~0.9 s a GiB of this thread's time);
  // a small one's here, where starting the worker would cost more than its hashing
  const blob = hashesOffThread(check) ? new OffThreadHashTap() : new HashTap();
  const head = await peek(raw, 8);
  const decompressor = await openDecompressor(head, where, signal);
  const tarTap = check.diffId !== undefined && decompressor !== undefined ? new HashTap() : undefined;
  // names as their bytes (latin1), checked for UTF-8 entry by entry (entryName)
  const extract = tar.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tar.extract>[0]);
  const stages: (Readable | Duplex | tar.Extract)[] = [raw, blob];
  if (decompressor !== undefined) stages.push(decompressor.stream);
  if (tarTap !== undefined) stages.push(tarTap);
  stages.push(new RewritePax(), extract);
  const feeding = (pipeline as (...streams: unknown[]) => Promise<void>)(...stages, { signal });
  feeding.catch(() => {});
  const written = new Set<string>();
  try {
    const marks = covered === undefined ? undefined : [];
    for await (const entry of extract) await applyEntry(tree, entry, written, where, covered, marks);
    if (covered !== undefined && (marks?.length !== covered.marks.length || marks.some((mark, i) => mark !== covered.marks[i]))) {
      throw invalid(`${where} changed while it was read: its whiteouts and hard links are not the ones read a moment before; build again from a file nothing writes to`, where);
    }
    await feeding;
    await decompressor?.finished();
  } catch (error) {
    raw.destroy();
    await decompressor?.finished().catch(() => {});
    if (isKubeosError(error)) throw error;
    throw mapStreamError(error, where);
  }
  if (check.size !== undefined && blob.bytes < check.size) {
    throw new KubeosError('E_SOURCE_TRUNCATED', `${where} has ${blob.bytes} bytes, its manifest says ${check.size}`, { hint: 'the archive is truncated: copy or download it again', details: { where, expected: check.size, actual: blob.bytes } });
  }
  const mismatch = (what: string, expected: string, actual: string) => new KubeosError('E_HASH_MISMATCH', `${where}: ${what} is ${actual}, its manifest says ${expected}`, {
    hint: 'the archive was altered or damaged; rebuild or download it again', details: { where, expected, actual },
  });
  if (check.size !== undefined && blob.bytes !== check.size) throw mismatch('size', String(check.size), String(blob.bytes));
  const blobDigest = blob instanceof HashTap ? blob.digest() : `sha256:${await blob.digest()}`;
  if (check.digest !== undefined && blobDigest !== check.digest) throw mismatch('digest', check.digest, blobDigest);
  if (check.diffId !== undefined) {
    const actual = tarTap?.digest() ?? blobDigest;
    if (actual !== check.diffId) throw mismatch('uncompressed digest (diff_id)', check.diffId, actual);
  }
}
