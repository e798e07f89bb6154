/**
 * Two versions of an image get their own filesystem UUIDs but one checksum and directory-hash
 * seed: made from the same tree, the two filesystems differ only where the UUID is stored, so a
 * delta between versions carries what changed and not every checksummed block.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { makeExt4 } from '../../builder/disk/make-ext4.js';
import { normalizeTimes } from '../../builder/rootfs/stage-rootfs.js';
import { run } from '../../runtime/core/exec.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { testNeeding } from '../helpers/tools.js';

const needing = await testNeeding(['mke2fs', 'debugfs', 'dumpe2fs', 'tune2fs', 'e2fsck']);
const seed = '6b1f2c3d-0000-4000-8000-00000000a000';
const v1 = '6b1f2c3d-0000-4000-8000-00000000a001';
const v2 = '6b1f2c3d-0000-4000-8000-00000000a002';

async function tree(dir: string): Promise<string> {
  const root = join(dir, 'tree');
  // enough directories and entries that directory blocks and inode tables spread over the image
  for (let d = 0; d < 60; d++) {
    await mkdir(join(root, `dir${d}`), { recursive: true });
    for (let f = 0; f < 40; f++) await writeFile(join(root, `dir${d}`, `file${f}`), `dir ${d} file ${f}\n`.repeat(f + 1));
  }
  return root;
}

/** As the builder stages a tree: every time fixed, so only the UUID can differ. */
async function stamped(root: string): Promise<string> {
  await normalizeTimes(root, 1_700_000_000);
  return root;
}

async function differingBlocks(a: string, b: string): Promise<number> {
  const [x, y] = [await readFile(a), await readFile(b)];
  let differing = 0;
  for (let at = 0; at < x.length; at += 4096) if (!x.subarray(at, at + 4096).equals(y.subarray(at, at + 4096))) differing++;
  return differing;
}

needing('two filesystems of one tree made with one checksum seed and two UUIDs differ only in their superblocks, and each checks clean with its own UUID', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-ext4-seed-');
  const root = await tree(dir);
  // each from a freshly stamped tree, as each build stages its own (reading a file may move its atime)
  const make = async (file: string, uuid: string, checksumSeed?: string) => makeExt4({ file: join(dir, file), size: 64 << 20, label: 'kubeos-root', uuid, checksumSeed, tree: await stamped(root), journal: false, epoch: 1_700_000_000 });
  await make('seeded-1.img', v1, seed);
  await make('seeded-2.img', v2, seed);
  await make('plain-1.img', v1);
  await make('plain-2.img', v2);
  const seeded = await differingBlocks(join(dir, 'seeded-1.img'), join(dir, 'seeded-2.img'));
  const plain = await differingBlocks(join(dir, 'plain-1.img'), join(dir, 'plain-2.img'));
  t.log(`4 KiB blocks that differ between the versions: ${seeded} with one seed, ${plain} with a seed per UUID`);
  // the primary superblock and its backups (one per group holding one; 64 MiB is 2 groups)
  t.true(seeded <= 2, `${seeded} blocks differ`);
  t.true(plain > 20, `${plain} blocks differ without the shared seed`);
  for (const [file, uuid] of [['seeded-1.img', v1], ['seeded-2.img', v2]] as const) {
    const { stdout } = await run('dumpe2fs', ['-h', join(dir, file)], { timeoutMs: 60_000 });
    t.regex(stdout, new RegExp(`Filesystem UUID:\\s+${uuid}`));
    t.regex(stdout, /metadata_csum_seed/);
    await run('e2fsck', ['-fn', join(dir, file)], { timeoutMs: 60_000 });
  }
  // made the same way twice: the same bytes
  await make('seeded-1b.img', v1, seed);
  t.is(await differingBlocks(join(dir, 'seeded-1.img'), join(dir, 'seeded-1b.img')), 0);
});
