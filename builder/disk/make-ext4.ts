/** ext4 filesystems written straight into image files with `mke2fs -d` (no loop device, no mount). */
import { rm, truncate, writeFile } from 'node:fs/promises';
import { KubeosError, isKubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';
import { formatSize } from '../layout/size.js';

export interface Ext4Input {
  file: string;
  size: number;
  label: string;
  uuid: string;
  /** Directory to copy in; undefined makes an empty filesystem. */
  tree?: string;
  /** Bytes of file data in `tree`, to fail early with a clear message. */
  treeBytes?: number;
  /** The slot the filesystem must fit, for that message. */
  slotSize?: number;
  journal: boolean;
  epoch: number;
  signal?: AbortSignal;
}

export async function makeExt4(input: Ext4Input): Promise<void> {
  if (input.treeBytes !== undefined && input.slotSize !== undefined && input.treeBytes > input.slotSize * 0.95) {
    throw tooBig(input, undefined);
  }
  await rm(input.file, { force: true });
  await writeFile(input.file, '');
  await truncate(input.file, input.size);
  const args = [
    '-q', '-F', '-t', 'ext4',
    '-b', '4096', '-I', '256', '-m', '0',
    '-L', input.label.slice(0, 16),
    '-U', input.uuid.toLowerCase(),
    '-E', `hash_seed=${input.uuid.toLowerCase()},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0`,
    '-O', input.journal ? 'has_journal' : '^has_journal',
  ];
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
    if (isKubeosError(error, 'E_TOOL_FAILED') && /allocate|No space|too many|Could not/i.test(String(error.details?.['stderr']))) {
      throw tooBig(input, error);
    }
    throw error;
  }
  if (input.tree !== undefined) await pinChangeTimes(input);
}

/**
 * mke2fs -d copies each file's ctime, which no program may set; rewrite it with debugfs. -d
 * allocates inodes in sequence from the first non-reserved one, so the used ones are 2 (the root)
 * and 11 up to the count in use.
 */
async function pinChangeTimes(input: Ext4Input): Promise<void> {
  const env = { E2FSPROGS_FAKE_TIME: String(input.epoch) };
  const { stdout } = await run('dumpe2fs', ['-h', input.file], { env, signal: input.signal, timeoutMs: 60_000 });
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(stdout)?.[1]);
  const used = field('Inode count') - field('Free inodes');
  const commands = [`sif <2> ctime @${input.epoch}`];
  for (let inode = 11; inode <= used; inode++) commands.push(`sif <${inode}> ctime @${input.epoch}`);
  const script = `${input.file}.debugfs`;
  await writeFile(script, `${commands.join('\n')}\n`);
  try {
    await run('debugfs', ['-w', '-f', script, input.file], { env, signal: input.signal, timeoutMs: 5 * 60_000 });
  } finally {
    await rm(script, { force: true });
  }
}

function tooBig(input: Ext4Input, cause: unknown): KubeosError {
  const content = input.treeBytes === undefined ? 'the root filesystem' : `the root filesystem (${formatSize(input.treeBytes)} of files)`;
  const slot = input.slotSize ?? input.size;
  return new KubeosError('E_ROOTFS_TOO_BIG', `${content} does not fit its ${formatSize(slot)} slot`, {
    cause,
    hint: 'make the root slots bigger in the layout, or the image smaller',
    details: { slotSize: slot, treeBytes: input.treeBytes },
  });
}
