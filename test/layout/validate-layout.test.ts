import test from 'ava';
import { isKubeosError, KubeosError } from '../../runtime/core/errors.js';
import { loadLayout } from '../../builder/layout/load-layout.js';
import { planDisk } from '../../builder/layout/plan-disk.js';
import { validateLayout } from '../../builder/layout/validate-layout.js';
import type { Problem } from '../../builder/config/problems.js';

const MiB = 1024 * 1024;

function base(): Record<string, unknown> {
  return {
    name: 't',
    partitions: [
      { name: 'boot', role: 'esp', size: '40MiB', filesystem: 'vfat' },
      { name: 'rootA', role: 'root-a', size: '64MiB', filesystem: 'ext4' },
      { name: 'rootB', role: 'root-b', size: '64MiB', filesystem: 'ext4' },
      { name: 'persist', role: 'persist', size: '32MiB', filesystem: 'ext4' },
    ],
  };
}

function problemsOf(error: unknown): Problem[] {
  if (!isKubeosError(error)) throw new Error('expected a KubeosError');
  return error.details?.['problems'] as Problem[];
}

test('the default layout has the four partitions with Discoverable Partitions types', async (t) => {
  const layout = await loadLayout('kubeos');
  t.deepEqual(layout.partitions.map((p) => [p.name, p.role, p.type]), [
    ['boot', 'esp', 'C12A7328-F81F-11D2-BA4B-00A0C93EC93B'],
    ['rootA', 'root-a', '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709'],
    ['rootB', 'root-b', '4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709'],
    ['persist', 'persist', '0FC63DAF-8483-4772-8E79-3D69D8477DE4'],
  ]);
});

test('the disk plan aligns every partition to 1 MiB and derives the same ids every time', (t) => {
  const layout = validateLayout(base(), 't.json');
  const one = planDisk(layout);
  const two = planDisk(validateLayout(base(), 't.json'));
  t.deepEqual(one, two);
  for (const p of one.partitions) t.is(p.offset % MiB, 0, p.name);
  t.is(one.partitions[0]?.offset, MiB);
  t.is(new Set(one.partitions.map((p) => p.uuid)).size, 4);
  t.true(one.size >= (one.partitions.at(-1)?.offset ?? 0) + 32 * MiB + 33 * 512);
  t.deepEqual(one.partitions.filter((p) => p.attributeBits.includes(60)).map((p) => p.name), ['rootA', 'rootB']);
});

test('a layout with several mistakes reports all of them with their paths', (t) => {
  const layout = base();
  const parts = layout['partitions'] as Record<string, unknown>[];
  parts[0] = { ...parts[0], size: 'big' };
  parts[2] = { ...parts[2], size: '128MiB' };
  layout['colour'] = 'blue';
  const error = t.throws(() => validateLayout(layout, 'bad.json'), { instanceOf: KubeosError });
  t.is(error?.code, 'E_LAYOUT_INVALID');
  t.deepEqual(problemsOf(error).map((p) => p.path).sort(), ['colour', 'partitions', 'partitions[0].size']);
  t.snapshot(error?.message);
});

test('an unknown filesystem type is named as such', (t) => {
  const layout = base();
  (layout['partitions'] as Record<string, unknown>[])[3] = { name: 'persist', role: 'persist', size: '32MiB', filesystem: 'btrfs' };
  const error = t.throws(() => validateLayout(layout, 'fs.json'), { instanceOf: KubeosError });
  t.is(error?.code, 'E_FS_UNKNOWN');
  t.deepEqual(problemsOf(error).map((p) => p.path), ['partitions[3].filesystem']);
});

test('a missing role and a duplicate name are both reported', (t) => {
  const layout = base();
  (layout['partitions'] as Record<string, unknown>[])[3] = { name: 'rootB', role: 'root-b', size: '64MiB', filesystem: 'ext4' };
  const error = t.throws(() => validateLayout(layout, 'dup.json'), { instanceOf: KubeosError });
  const expected = problemsOf(error).map((p) => p.expected);
  t.true(expected.includes('exactly one partition with role persist'));
  t.true(expected.includes('exactly one partition with role root-b'));
  t.true(expected.includes('unique partition names'));
});

test('a disk size smaller than the partitions need does not fit', (t) => {
  const error = t.throws(() => planDisk(validateLayout({ ...base(), diskSize: '100MiB' }, 'small.json')), { instanceOf: KubeosError });
  t.is(error?.code, 'E_LAYOUT_DOES_NOT_FIT');
  t.is(error?.details?.['needed'], 202 * MiB);
});

test('a layout file that is not JSON names the file', async (t) => {
  const error = await t.throwsAsync(loadLayout('test/layout/fixtures/not-json.json'), { instanceOf: KubeosError });
  t.is(error?.code, 'E_LAYOUT_INVALID');
  t.is(error?.details?.['file'], 'test/layout/fixtures/not-json.json');
});
