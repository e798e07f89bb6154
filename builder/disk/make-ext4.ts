/** ext4 filesystems written straight into image files with `mke2fs -d` (no loop device, no mount). */
import { mkdir, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KubeosError, isKubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';
import { formatSize } from '../layout/size.js';
import { sortedPaths, stagedMode, typeBits, type MetaList } from '../source/file-meta.js';

export interface Ext4Input {
  file: string;
  size: number;
  label: string;
  uuid: string;
  /**
   * The UUID the filesystem is made with, when it differs from `uuid`: metadata checksums and the
   * directory hash seed derive from it (`metadata_csum_seed` keeps the checksum seed apart from the
   * UUID), and `uuid` is set after by tune2fs, which then rewrites only the superblock. Two
   * versions of an image made with one seed share every unchanged block, directory blocks and
   * inode tables included, which keeps deltas to what changed (docs/deltas.md).
   */
  checksumSeed?: string;
  /** Directory to copy in; undefined makes an empty filesystem. */
  tree?: string;
  /** Bytes of file data in `tree`, to fail early with a clear message. */
  treeBytes?: number;
  /** The slot the filesystem must fit, for that message. */
  slotSize?: number;
  /** Entries in `tree`: the filesystem gets at least this many inodes (mke2fs's default ratio runs out on many small files). */
  entries?: number;
  journal: boolean;
  epoch: number;
  /** What the tree could not hold (owners, exact modes, devices, xattrs), applied after mke2fs -d. */
  meta?: MetaList;
  /** Owner of the tree's files as staged (the building user). */
  stagedOwner?: { uid: number; gid: number };
  signal?: AbortSignal;
}

export async function makeExt4(input: Ext4Input): Promise<void> {
  if (input.treeBytes !== undefined && input.slotSize !== undefined && input.treeBytes > input.slotSize * 0.95) {
    throw tooBig(input, undefined);
  }
  await rm(input.file, { force: true });
  await writeFile(input.file, '');
  await truncate(input.file, input.size);
  const made = (input.checksumSeed ?? input.uuid).toLowerCase();
  const reUuid = made !== input.uuid.toLowerCase();
  const args = [
    '-q', '-F', '-t', 'ext4',
    '-b', '4096', '-I', '256', '-m', '0',
    '-L', input.label.slice(0, 16),
    '-U', made,
    '-E', `hash_seed=${made},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0`,
    '-O', [input.journal ? 'has_journal' : '^has_journal', ...(reUuid ? ['metadata_csum_seed'] : [])].join(','),
  ];
  if (input.entries !== undefined) args.push('-N', String(inodeCount(input.entries, input.size)));
  if (input.tree !== undefined) args.push('-d', input.tree);
  args.push(input.file, `${Math.floor(input.size / 1024)}k`);
  try {
    await run('mke2fs', args, {
      timeoutMs: 10 * 60_000,
      signal: input.signal,
      // e2fsprogs stamps superblock and inode times with this instead of the clock
      env: { E2FSPROGS_FAKE_TIME: String(input.epoch), SOURCE_DATE_EPOCH: String(input.epoch) },
    });
  } catch (error) {
    const stderr = String(isKubeosError(error) ? error.details?.['stderr'] : '');
    if (isKubeosError(error, 'E_TOOL_FAILED') && /inode/i.test(stderr) && /allocate|no free|too many/i.test(stderr)) {
      throw new KubeosError('E_ROOTFS_TOO_BIG', `the root filesystem's ${input.entries ?? 'many'} entries need more inodes than a ${formatSize(input.size)} ext4 filesystem can hold`, {
        cause: error,
        hint: 'make the root slots bigger in the layout, or the image hold fewer files',
        details: { entries: input.entries, size: input.size },
      });
    }
    if (isKubeosError(error, 'E_TOOL_FAILED') && /allocate|No space|too many|Could not/i.test(stderr)) {
      throw tooBig(input, error);
    }
    throw error;
  }
  if (input.tree !== undefined) await fixInodes(input);
  if (reUuid) {
    await run('tune2fs', ['-U', input.uuid.toLowerCase(), input.file], { timeoutMs: 60_000, signal: input.signal, env: { E2FSPROGS_FAKE_TIME: String(input.epoch) } });
  }
}

/** Inodes for a tree of `entries`: mke2fs's default (one per 16 KiB) unless the tree needs more, with a margin. */
export function inodeCount(entries: number, size: number): number {
  return Math.max(Math.floor(size / 16384), Math.ceil(entries * 1.1) + 64);
}

/** A path as one debugfs argument; debugfs has no escape for `"` or a newline. */
export function debugfsPath(rel: string): string {
  if (/["\n\r]/.test(rel)) {
    throw new KubeosError('E_SOURCE_INVALID', `${JSON.stringify(rel)}: a name with a double quote or a newline cannot be written into an ext4 image with debugfs`, {
      hint: 'rename the file in the source, or use a squashfs root (layout filesystem "squashfs")',
      details: { path: rel },
    });
  }
  return `"/${rel}"`;
}

export interface DebugfsFixups {
  commands: string[];
  /** xattr values: file name (in the values directory) → bytes, for `ea_set -f`. */
  values: Map<string, Buffer>;
}

/** The kernel's new_encode_dev: minor's low byte, the 12-bit major, then the minor's upper 12 bits. */
export function encodeDevice(major: number, minor: number): number {
  return ((minor & 0xff) | (major << 8) | ((minor & ~0xff) << 12)) >>> 0;
}

/**
 * debugfs commands that turn what mke2fs -d copied from a tree staged as `staged` into what the
 * MetaList says: owners, setuid and other bits the tree could not hold, device nodes and FIFOs
 * (the tree holds empty placeholders), xattrs. Pure; only differences become commands.
 */
export function renderDebugfsFixups(meta: MetaList, staged: { uid: number; gid: number }, epoch: number, valuesDir: string): DebugfsFixups {
  const commands: string[] = [];
  const values = new Map<string, Buffer>();
  for (const rel of sortedPaths(meta)) {
    const m = meta.get(rel);
    if (m === undefined) continue;
    let target = rel === '' ? '"/"' : debugfsPath(rel);
    const node = m.kind === 'char' || m.kind === 'block' || m.kind === 'fifo';
    if (node) {
      const slash = rel.lastIndexOf('/');
      const dir = slash < 0 ? '' : rel.slice(0, slash);
      const name = rel.slice(slash + 1);
      target = debugfsPath(rel);
      commands.push(`cd ${dir === '' ? '"/"' : debugfsPath(dir)}`, `rm "${name}"`);
      const [major, minor] = m.rdev ?? [0, 0];
      // debugfs's mknod takes a minor of at most 16 bits and cuts a major above 4095 silently:
      // numbers past 255 are written as the kernel's new encoding into i_block[1] instead
      const small = major < 256 && minor < 256;
      commands.push(m.kind === 'fifo' ? `mknod "${name}" p` : `mknod "${name}" ${m.kind === 'char' ? 'c' : 'b'} ${small ? `${major} ${minor}` : '0 0'}`, 'cd "/"');
      if (m.kind !== 'fifo' && !small) {
        commands.push(`sif ${target} block[0] 0`, `sif ${target} block[1] ${encodeDevice(major, minor)}`);
      }
      const time = m.mtime ?? epoch;
      for (const field of ['atime', 'mtime', 'ctime']) commands.push(`sif ${target} ${field} @${time}`);
    }
    if (node || m.uid !== staged.uid || rel === '') commands.push(`sif ${target} uid ${m.uid}`);
    if (node || m.gid !== staged.gid || rel === '') commands.push(`sif ${target} gid ${m.gid}`);
    if (m.kind !== 'symlink' && (node || m.mode !== stagedMode(m) || rel === '')) commands.push(`sif ${target} mode 0${(typeBits[m.kind] | m.mode).toString(8)}`);
    for (const [name, value] of Object.entries(m.xattrs ?? {}).sort(([a], [b]) => (a < b ? -1 : 1))) {
      if (!/^[A-Za-z0-9._@-]+$/.test(name)) throw new KubeosError('E_SOURCE_INVALID', `${rel}: xattr name ${JSON.stringify(name)} is not one debugfs can write`, { details: { path: rel, xattr: name } });
      const file = String(values.size);
      values.set(file, value);
      commands.push(`ea_set -f "${join(valuesDir, file)}" ${target} ${name}`);
    }
  }
  return { commands, values };
}

/**
 * One debugfs pass after mke2fs -d: first the MetaList's fixups, then every inode's ctime, which
 * mke2fs -d copies from the tree and no program may set. -d allocates inodes in sequence from the
 * first non-reserved one, so the used ones are 2 (the root) and 11 up to the count in use.
 */
async function fixInodes(input: Ext4Input): Promise<void> {
  const env = { E2FSPROGS_FAKE_TIME: String(input.epoch) };
  const valuesDir = `${input.file}.xattrs`;
  const fixups = input.meta === undefined
    ? { commands: [], values: new Map<string, Buffer>() }
    : renderDebugfsFixups(input.meta, input.stagedOwner ?? { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }, input.epoch, valuesDir);
  const script = `${input.file}.debugfs`;
  try {
    if (fixups.values.size > 0) {
      await mkdir(valuesDir, { recursive: true });
      for (const [name, value] of fixups.values) await writeFile(join(valuesDir, name), value);
    }
    if (fixups.commands.length > 0) {
      await writeFile(script, `${fixups.commands.join('\n')}\n`);
      await runDebugfs(script, input, env);
    }
    const { stdout } = await run('dumpe2fs', ['-h', input.file], { env, signal: input.signal, timeoutMs: 60_000 });
    const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(stdout)?.[1]);
    const used = field('Inode count') - field('Free inodes');
    const commands = [`sif <2> ctime @${input.epoch}`];
    for (let inode = 11; inode <= used; inode++) commands.push(`sif <${inode}> ctime @${input.epoch}`);
    await writeFile(script, `${commands.join('\n')}\n`);
    await runDebugfs(script, input, env);
  } finally {
    await rm(script, { force: true });
    await rm(valuesDir, { recursive: true, force: true });
  }
}

/** debugfs exits 0 whatever its commands did: a failed command shows on stderr, and fails the build. */
async function runDebugfs(script: string, input: Ext4Input, env: Record<string, string>): Promise<void> {
  const { stderr } = await run('debugfs', ['-w', '-f', script, input.file], { env, signal: input.signal, timeoutMs: 10 * 60_000 });
  const failures = stderr.split('\n').filter((line) => line.trim() !== '' && !/^debugfs \d/.test(line) && !/^rm: File not found/.test(line));
  if (failures.length > 0) {
    throw new KubeosError('E_TOOL_FAILED', `debugfs could not apply the root filesystem's metadata: ${failures.slice(0, 5).join('; ')}`, { details: { tool: 'debugfs', stderr } });
  }
}

function tooBig(input: Ext4Input, cause: unknown): KubeosError {
  const entries = input.entries === undefined ? '' : `${input.entries} entries, `;
  const content = input.treeBytes === undefined ? 'the root filesystem' : `the root filesystem (${entries}${formatSize(input.treeBytes)} of files)`;
  const slot = input.slotSize ?? input.size;
  return new KubeosError('E_ROOTFS_TOO_BIG', `${content} does not fit its ${formatSize(slot)} slot`, {
    cause,
    hint: 'make the root slots bigger in the layout, or the image smaller (on ext4 each file takes at least a 4 KiB block and an inode)',
    details: { slotSize: slot, treeBytes: input.treeBytes, entries: input.entries },
  });
}
