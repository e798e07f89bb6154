/**
 * Copies a directory into a staging tree in sorted order, through the same confined resolution
 * as layers: a `dir` source, and the builder's own files merged over a source's root.
 */
import { chmod, copyFile, link, lstat, mkdir, readdir, readlink, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { removePath, type StagingTree } from './apply-layer.js';
import { deviceNumberProblem, stagedMode, type FileKind, type FileMeta } from './file-meta.js';
import { checkSymlinkTarget, resolveInRoot } from './safe-path.js';

export interface CopyOptions {
  /** Owner recorded for every copied path (the builder's files are root's); default: the source's. */
  owner?: { uid: number; gid: number };
  /** Record source mtimes; false: the build's SOURCE_DATE_EPOCH. */
  keepTimes: boolean;
  where: string;
}

function kindOf(info: import('node:fs').Stats): FileKind | undefined {
  if (info.isFile()) return 'file';
  if (info.isDirectory()) return 'dir';
  if (info.isSymbolicLink()) return 'symlink';
  if (info.isCharacterDevice()) return 'char';
  if (info.isBlockDevice()) return 'block';
  if (info.isFIFO()) return 'fifo';
  return undefined;
}

/** Linux's dev_t encoding (glibc's gnu_dev_major/minor). */
function splitRdev(rdev: number): [number, number] {
  const big = BigInt(rdev);
  const major = Number(((big >> 8n) & 0xfffn) | ((big >> 32n) & ~0xfffn));
  const minor = Number((big & 0xffn) | ((big >> 12n) & ~0xffn));
  return [major, minor];
}

export async function copyTreeInto(tree: StagingTree, from: string, options: CopyOptions): Promise<void> {
  const links = new Map<string, string>();
  const walk = async (rel: string[]): Promise<void> => {
    const names: string[] = [];
    for (const raw of await readdir(join(from, ...rel), { encoding: 'buffer' })) {
      // as bytes first: a name that is not UTF-8 would come back with U+FFFD and name another file
      const name = raw.toString('utf8');
      if (!Buffer.from(name, 'utf8').equals(raw)) {
        throw new KubeosError('E_SOURCE_INVALID', `${join(from, ...rel)}: a file name there is not UTF-8 (${JSON.stringify(raw.toString('latin1'))} as latin1); rename it`, { details: { directory: join(from, ...rel) } });
      }
      names.push(name);
    }
    for (const name of names.sort()) {
      const source = join(from, ...rel, name);
      const info = await lstat(source);
      const kind = kindOf(info);
      if (kind === undefined) continue;
      const parent = resolveInRoot(tree.root, rel, options.where);
      const target = [...parent, name].join('/');
      const path = join(tree.root, target);
      const meta: FileMeta = {
        kind,
        mode: info.mode & 0o7777,
        uid: options.owner?.uid ?? info.uid,
        gid: options.owner?.gid ?? info.gid,
        mtime: options.keepTimes ? Math.floor(info.mtimeMs / 1000) : undefined,
      };
      if (kind === 'char' || kind === 'block') meta.rdev = splitRdev(info.rdev);
      const problem = meta.rdev === undefined ? undefined : deviceNumberProblem(meta.rdev);
      if (problem !== undefined) throw new KubeosError('E_SOURCE_INVALID', `${join(from, ...rel)}: device node: ${problem}`, { details: { path: join(from, ...rel) } });
      const existing = await lstat(path).catch(() => undefined);
      const mergeable = existing !== undefined && (existing.isDirectory()
        || (existing.isSymbolicLink() && (await lstat(join(tree.root, ...(resolveInRoot(tree.root, [...parent, name], options.where)))).catch(() => undefined))?.isDirectory() === true));
      if (kind === 'dir' && mergeable) {
        // a directory both trees have (or a symlink to one, like merged /usr's /bin) keeps the source's metadata
        if (existing.isDirectory() && !tree.meta.has(target)) tree.meta.set(target, meta);
        await walk([...rel, name]);
        continue;
      }
      if (existing !== undefined) await removePath(tree, target, existing);
      tree.dirs.clear();
      const inode = `${info.dev}:${info.ino}`;
      const first = kind === 'file' && info.nlink > 1 ? links.get(inode) : undefined;
      if (first !== undefined) {
        await link(join(tree.root, first), path);
        const shared = tree.meta.get(first);
        if (shared !== undefined) tree.meta.set(target, shared);
        continue;
      }
      if (kind === 'dir') {
        await mkdir(path);
        await chmod(path, stagedMode(meta));
        tree.meta.set(target, meta);
        await walk([...rel, name]);
        continue;
      }
      if (kind === 'file') {
        await copyFile(source, path);
        await chmod(path, stagedMode(meta));
        if (info.nlink > 1) links.set(inode, target);
      } else if (kind === 'symlink') {
        const linkTarget = await readlink(source);
        checkSymlinkTarget(parent, linkTarget, target, options.where);
        await symlink(linkTarget, path);
      } else {
        await writeFile(path, '', { flag: 'wx', mode: 0o600 });
      }
      tree.meta.set(target, meta);
    }
  };
  try {
    await walk([]);
  } catch (error) {
    if (error instanceof KubeosError) throw error;
    throw new KubeosError('E_SOURCE_INVALID', `${options.where}: cannot copy ${from}: ${(error as Error).message}`, { cause: error, details: { where: options.where } });
  }
}
