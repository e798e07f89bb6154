/** A root with many small files: the ext4 image gets the inodes and blocks they need, not mke2fs's defaults. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { rootfsSize } from '../../builder/build/build-image.js';
import { makeExt4 } from '../../builder/disk/make-ext4.js';
import { normalizeTimes, type TreeStats } from '../../builder/rootfs/stage-rootfs.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { testNeeding } from '../helpers/tools.js';

const fsTest = await testNeeding(['mke2fs', 'debugfs', 'e2fsck']);
const MiB = 1024 * 1024;

async function manyFiles(dir: string, count: number): Promise<string> {
  const tree = join(dir, 'tree');
  for (let d = 0; d < count / 1000; d++) {
    await mkdir(join(tree, `d${d}`), { recursive: true });
    await Promise.all(Array.from({ length: 1000 }, (_, i) => writeFile(join(tree, `d${d}`, `f${i}`), 'x')));
  }
  return tree;
}

fsTest('5000 one-byte files fit a 64 MiB slot: the image is sized for their blocks and inodes', async (t) => {
  const dir = await makeTempDir(t);
  const tree = await manyFiles(dir, 5000);
  const stats: TreeStats = { entries: 0, blockBytes: 0 };
  const treeBytes = await normalizeTimes(tree, 1_700_000_000, stats);
  t.is(stats.entries, 5005);
  const file = join(dir, 'root.ext4');
  const size = rootfsSize(treeBytes, 64 * MiB, stats);
  t.true(size > rootfsSize(treeBytes, 64 * MiB), 'larger than the bytes alone ask for');
  await makeExt4({ file, size, slotSize: 64 * MiB, label: 't', uuid: '6a1a8e0e-0000-4000-8000-000000000002', journal: false, tree, treeBytes, entries: stats.entries, epoch: 1_700_000_000 });
  await execa('e2fsck', ['-fn', file]);
  const { stdout } = await execa('debugfs', ['-R', 'stat /d4/f999', file]);
  t.regex(stdout, /Type: regular\s.*\n.*\n?.*Size: 1\b/);
});

fsTest('a tree of many small files too big for its slot says how many entries it has, not only its bytes', async (t) => {
  const dir = await makeTempDir(t);
  const tree = await manyFiles(dir, 5000);
  const stats: TreeStats = { entries: 0, blockBytes: 0 };
  const treeBytes = await normalizeTimes(tree, 1_700_000_000, stats);
  // a 16 MiB slot: room for the bytes (5 KB), not for 5000 blocks and inodes
  const error = await t.throwsAsync(makeExt4({ file: join(dir, 'root.ext4'), size: 16 * MiB, slotSize: 16 * MiB, label: 't', uuid: '6a1a8e0e-0000-4000-8000-000000000003', journal: false, tree, treeBytes, entries: stats.entries, epoch: 1_700_000_000 }));
  t.true(isKubeosError(error, 'E_ROOTFS_TOO_BIG'), String(error));
  t.regex((error as Error).message, /5005 entries, 5000B of files\) does not fit its 16MiB slot|5005 entries need more inodes/);
  t.regex((error as { hint?: string }).hint ?? '', /4 KiB block and an inode/);
});
