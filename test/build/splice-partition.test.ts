/** Partition images copied into disk.img at their offsets, all-zero blocks left as holes. */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile, stat, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { splicePartition } from '../../builder/disk/write-partition-table.js';
import { makeFileTempDir, removeFileTempDirs } from '../helpers/temp-dir.js';

const MiB = 1 << 20;

test('a partition image lands at its offset, its zero blocks stay holes, and what is around it is kept', async (t) => {
  const dir = await makeFileTempDir('kubeos-splice-');
  const disk = join(dir, 'disk.img');
  await writeFile(disk, Buffer.alloc(0));
  await truncate(disk, 200 * MiB);
  // a marker before the partition: the splice must not touch it
  const head = randomBytes(4096);
  await writeFile(disk, head, { flag: 'r+' });
  // 130 blocks (past two turns of the event loop): data, 100 MiB of zeros, data, a ragged end
  const image = Buffer.concat([randomBytes(MiB), Buffer.alloc(100 * MiB), randomBytes(29 * MiB), randomBytes(12345)]);
  const source = join(dir, 'part.img');
  await writeFile(source, image);
  const seen: number[] = [];
  await splicePartition(disk, 64 * MiB, source, (done) => seen.push(done));
  const written = await readFile(disk);
  t.true(written.subarray(64 * MiB, 64 * MiB + image.length).equals(image));
  t.true(written.subarray(0, 4096).equals(head));
  t.is(seen.at(-1), image.length);
  // allocated: the marker and 30 MiB of data, not the 100 MiB of zeros
  t.true((await stat(disk)).blocks * 512 < 40 * MiB);
});

test('an aborted splice stops', async (t) => {
  const dir = await makeFileTempDir('kubeos-splice-');
  const disk = join(dir, 'disk.img');
  await writeFile(disk, Buffer.alloc(0));
  await truncate(disk, 200 * MiB);
  const source = join(dir, 'part.img');
  await writeFile(source, randomBytes(130 * MiB));
  const controller = new AbortController();
  controller.abort(new Error('stopped'));
  await t.throwsAsync(splicePartition(disk, 0, source, undefined, controller.signal), { message: 'stopped' });
});

test.after.always('remove the temporary directories', removeFileTempDirs);
