/**
 * A compressed read-only root: squashfs (gzip, which GRUB's squash4 reads) written with mksquashfs
 * from the staging tree. Owners, exact modes and device nodes come from pseudo definitions, so the
 * image is exact without root; mksquashfs sorts directories itself and is reproducible by default.
 */
import { chmod, lchown, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';
import { formatSize } from '../layout/size.js';
import { sortedPaths, stagedMode, type MetaList } from '../source/file-meta.js';

export interface SquashfsInput {
  file: string;
  tree: string;
  slotSize: number;
  epoch: number;
  meta?: MetaList;
  /** The building user; as root (uid 0) the tree is given the exact owners and modes. */
  stagedOwner?: { uid: number; gid: number };
  treeBytes?: number;
  signal?: AbortSignal;
}

/** Bundles and slot writes work in 4 MiB chunks: the image is padded to a whole number of them. */
const padding = 4 * 1024 * 1024;

function pseudoName(rel: string): string {
  if (/[\n\r]/.test(rel)) {
    throw new KubeosError('E_SOURCE_INVALID', `${JSON.stringify(rel)}: a name with a newline cannot be given to mksquashfs`, { details: { path: rel } });
  }
  return rel === '' ? '/' : rel.replace(/[\\\s"]/g, (c) => `\\${c}`);
}

export interface PseudoDefinitions {
  /** -pf lines. */
  pseudo: string[];
  /** -ef lines: the placeholders of device nodes, replaced by pseudo definitions. */
  excludes: string[];
}

/**
 * Pure: the pseudo definitions that make a staged tree what the MetaList says. `exact`: the tree
 * already holds owners and modes (a root build chowns it), so only device nodes and FIFOs remain.
 * Otherwise the tree is taken as root-owned (-all-root) and each difference is an `M` definition;
 * mksquashfs 4.5 ignores definitions under a directory that has one, which is refused here.
 */
export function renderPseudoDefinitions(meta: MetaList, exact: boolean, epoch: number): PseudoDefinitions {
  const pseudo: string[] = [];
  const excludes: string[] = [];
  const staged = { uid: 0, gid: 0 };
  const modified: string[] = [];
  const define = (rel: string, line: string) => {
    const parent = modified.find((dir) => rel.startsWith(`${dir}/`));
    if (parent !== undefined) {
      throw new KubeosError('E_SOURCE_INVALID', `${parent} and ${rel} both need owners or modes set by mksquashfs, which (before 4.6) cannot do both without root`, {
        hint: 'build as root, or use an ext4 root (layout filesystem "ext4")', details: { path: rel, parent },
      });
    }
    pseudo.push(line);
  };
  for (const rel of sortedPaths(meta)) {
    const m = meta.get(rel);
    if (m === undefined) continue;
    const time = m.mtime ?? epoch;
    const mode = m.mode.toString(8).padStart(4, '0');
    if (m.kind === 'char' || m.kind === 'block') {
      excludes.push(rel);
      define(rel, `${pseudoName(rel)} ${m.kind === 'char' ? 'C' : 'B'} ${time} ${mode} ${m.uid} ${m.gid} ${m.rdev?.[0] ?? 0} ${m.rdev?.[1] ?? 0}`);
    } else if (m.kind === 'fifo') {
      excludes.push(rel);
      define(rel, `${pseudoName(rel)} I ${time} ${mode} ${m.uid} ${m.gid} f`);
    } else if (exact) {
      continue;
    } else if (m.uid !== staged.uid || m.gid !== staged.gid || (m.kind !== 'symlink' && m.mode !== stagedMode(m))) {
      define(rel, `${pseudoName(rel)} M ${time} ${m.kind === 'symlink' ? '0777' : mode} ${m.uid} ${m.gid}`);
      if (m.kind === 'dir') modified.push(rel);
    }
  }
  return { pseudo, excludes };
}

async function applyOwners(tree: string, meta: MetaList): Promise<void> {
  for (const rel of sortedPaths(meta)) {
    const m = meta.get(rel);
    if (m === undefined || m.kind === 'char' || m.kind === 'block' || m.kind === 'fifo') continue;
    const path = join(tree, rel);
    await lchown(path, m.uid, m.gid);
    // chown clears setuid and setgid: the mode goes last
    if (m.kind !== 'symlink') await chmod(path, m.mode);
  }
}

/**
 * mksquashfs (4.5) takes xattrs only from the files themselves, so they are set on the staged tree
 * with setfattr: a root build only, since an ordinary user cannot set trusted.* or security.*
 * (and device nodes, made by pseudo definitions, cannot carry them).
 */
async function applyXattrs(tree: string, meta: MetaList, exact: boolean, signal?: AbortSignal): Promise<void> {
  for (const rel of sortedPaths(meta)) {
    const m = meta.get(rel);
    if (m?.xattrs === undefined) continue;
    const names = Object.keys(m.xattrs).sort();
    if (names.length === 0) continue;
    if (!exact || m.kind === 'char' || m.kind === 'block' || m.kind === 'fifo') {
      throw new KubeosError('E_SOURCE_INVALID', `${rel} has xattrs (${names.join(', ')}), which a squashfs root gets only in a build as root and not on device nodes or FIFOs`, {
        hint: 'build as root, or use an ext4 root (layout filesystem "ext4"), which takes xattrs in any build',
        details: { path: rel, xattrs: names },
      });
    }
    for (const name of names) {
      const value = m.xattrs[name] as Buffer;
      await run('setfattr', ['-h', '-n', name, '-v', `0x${value.toString('hex')}`, '--', join(tree, rel)], { signal, timeoutMs: 30_000 });
    }
  }
}

export async function makeSquashfs(input: SquashfsInput): Promise<number> {
  await rm(input.file, { force: true });
  // as root the tree can hold owners and modes itself; mksquashfs then copies them
  const exact = (input.stagedOwner?.uid ?? process.getuid?.() ?? 0) === 0 && input.meta !== undefined;
  if (exact && input.meta !== undefined) await applyOwners(input.tree, input.meta);
  const { pseudo, excludes } = renderPseudoDefinitions(input.meta ?? new Map(), exact, input.epoch);
  const pf = `${input.file}.pseudo`;
  const ef = `${input.file}.exclude`;
  await writeFile(pf, pseudo.map((l) => `${l}\n`).join(''));
  await writeFile(ef, excludes.map((l) => `${l}\n`).join(''));
  const xattrs = [...(input.meta?.values() ?? [])].some((m) => m.xattrs !== undefined && Object.keys(m.xattrs).length > 0);
  if (xattrs) {
    try {
      await applyXattrs(input.tree, input.meta ?? new Map(), exact, input.signal);
    } catch (error) {
      await rm(pf, { force: true });
      await rm(ef, { force: true });
      throw error;
    }
  }
  try {
    await run('mksquashfs', [
      input.tree, input.file, '-noappend', '-quiet', '-no-progress', '-comp', 'gzip', '-b', '131072',
      '-mkfs-time', String(input.epoch), xattrs ? '-xattrs' : '-no-xattrs', ...(exact ? [] : ['-all-root']),
      '-pf', pf, '-ef', ef,
    ], { signal: input.signal, timeoutMs: 30 * 60_000, env: { SOURCE_DATE_EPOCH: undefined } });
  } finally {
    await rm(pf, { force: true });
    await rm(ef, { force: true });
  }
  const size = (await stat(input.file)).size;
  const padded = Math.ceil(size / padding) * padding;
  if (padded > input.slotSize) {
    throw new KubeosError('E_ROOTFS_TOO_BIG', `the squashfs root (${formatSize(size)}) does not fit its ${formatSize(input.slotSize)} slot`, {
      hint: 'make the root slots bigger in the layout, or the image smaller',
      details: { slotSize: input.slotSize, treeBytes: input.treeBytes, imageBytes: size },
    });
  }
  await truncate(input.file, padded);
  return padded;
}
