/** `kubeos build` end to end through the CLI, checked by independent tools. */
import test from 'ava';
import { execa } from 'execa';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, readFile, readdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { hashFile } from '../../runtime/core/hash-file.js';
import { defaultCdcRule, indexBuffer } from '../../runtime/core/bundle/chunk-index.js';
import { loadSlotIndex } from '../../runtime/agent/slot-index-store.js';
import { jsonError, kubeos } from '../helpers/cli.js';
import { testNeeding } from '../helpers/tools.js';
import { makeFileTempDir, removeFileTempDirs } from '../helpers/temp-dir.js';

const buildTest = await testNeeding(['mke2fs', 'mkfs.vfat', 'mcopy', 'sgdisk', 'grub-mkimage', 'busybox', 'modinfo', 'e2fsck', 'fsck.vfat', 'grub-editenv', 'qemu-img']);
const epoch = '1700000000';
const env = { SOURCE_DATE_EPOCH: epoch };

interface BuildJson {
  image: { version: string; compatible: string; kernelVersion: string };
  disk: { size: number; partitions: { name: string; offset: number; size: number; number: number }[] };
  artifacts: Record<string, { size: number; sha256: string }>;
}

async function build(out: string, extra: string[] = []) {
  const result = await kubeos(['build', 'images/minimal', '--layout', 'small', '--out', out, '--json', ...extra], { env });
  if (result.exitCode !== 0) throw new Error(`build failed: ${result.stderr}\n${result.stdout}`);
  return JSON.parse(result.stdout) as BuildJson & { seconds: number };
}

async function extract(disk: string, offset: number, size: number, to: string): Promise<string> {
  await pipeline(createReadStream(disk, { start: offset, end: offset + size - 1 }), createWriteStream(to));
  return to;
}

const dir = await makeFileTempDir('kubeos-build-');
let first: Promise<BuildJson> | undefined;
const firstBuild = () => (first ??= build(join(dir, 'one')));

buildTest('the disk passes sgdisk, e2fsck, fsck.vfat and grub-editenv', async (t) => {
  const result = await firstBuild();
  const disk = join(dir, 'one', 'disk.img');
  const verify = await execa('sgdisk', ['-v', disk]);
  t.regex(verify.stdout, /No problems found/);
  const part = (name: string) => {
    const p = result.disk.partitions.find((x) => x.name === name);
    if (!p) throw new Error(`no ${name}`);
    return p;
  };
  for (const name of ['rootA', 'persist']) {
    const file = await extract(disk, part(name).offset, part(name).size, join(dir, `${name}.img`));
    await t.notThrowsAsync(execa('e2fsck', ['-fn', file]), name);
  }
  const esp = await extract(disk, part('boot').offset, part('boot').size, join(dir, 'esp.img'));
  await t.notThrowsAsync(execa('fsck.vfat', ['-n', esp]));
  await execa('mcopy', ['-i', esp, '::/EFI/BOOT/grubenv', join(dir, 'grubenv')], { env: { MTOOLS_SKIP_CHECK: '1' } });
  const listed = await execa('grub-editenv', [join(dir, 'grubenv'), 'list']);
  t.deepEqual(listed.stdout.split('\n'), ['kubeos_good=A', 'kubeos_try=', 'kubeos_tries=0', 'kubeos_failed=']);
  const files = await execa('mdir', ['-b', '-i', esp, '::/EFI/BOOT'], { env: { MTOOLS_SKIP_CHECK: '1' } });
  t.deepEqual(files.stdout.trim().split('\n').map((f) => f.replace('::/EFI/BOOT/', '')).sort(), ['BOOTX64.EFI', 'grub.cfg', 'grubenv']);
  // rootB starts empty
  const rootB = await extract(disk, part('rootB').offset, part('rootB').size, join(dir, 'rootB.img'));
  t.is(await hashFile(rootB), await hashFile(await extract('/dev/zero', 0, part('rootB').size, join(dir, 'zero.img'))));
});

buildTest('persist holds slot A\'s record and chunk index as the agent keeps them, owned by root, so a first delta need not read slot A', async (t) => {
  const result = await firstBuild();
  const disk = join(dir, 'one', 'disk.img');
  const part = (name: string) => result.disk.partitions.find((x) => x.name === name)!;
  const persist = await extract(disk, part('persist').offset, part('persist').size, join(dir, 'persist-state.img'));
  const cat = async (path: string) => (await execa('debugfs', ['-R', `cat ${path}`, persist])).stdout;
  const rootfs = result.artifacts['rootfs.img']!;
  const state = JSON.parse(await cat('/.kubeos/agent/state.json')) as { slots: Record<string, unknown>; channelSerials: unknown };
  t.deepEqual(state, { slots: { A: { version: '1.0.0', sha256: rootfs.sha256, size: rootfs.size, committed: true } }, channelSerials: {} });
  const saved = JSON.parse(await cat('/.kubeos/agent/slot-A.index.json')) as { image: string; index: { rule: unknown; chunks: [number, string][] } };
  t.is(saved.image, rootfs.sha256);
  const image = await readFile(join(dir, 'one', 'rootfs.img'));
  t.deepEqual(saved.index.chunks, indexBuffer(image).map((c) => [c.length, c.sha256]));
  // the agent's own reader takes it for that image
  const stateDir = join(dir, 'factory-state');
  await mkdir(stateDir, { recursive: true });
  await writeFile(join(stateDir, 'slot-A.index.json'), await cat('/.kubeos/agent/slot-A.index.json'));
  t.is((await loadSlotIndex(stateDir, 'A', rootfs.sha256, defaultCdcRule))?.length, saved.index.chunks.length);
  for (const path of ['/.kubeos', '/.kubeos/agent', '/.kubeos/agent/state.json', '/.kubeos/agent/slot-A.index.json']) {
    const { stdout } = await execa('debugfs', ['-R', `stat ${path}`, persist]);
    t.regex(stdout, /User:\s+0\s+Group:\s+0/, path);
  }
});

buildTest('build.json records the partition table and the sha256 of each artifact', async (t) => {
  const result = await firstBuild();
  const recorded = JSON.parse(await readFile(join(dir, 'one', 'build.json'), 'utf8')) as BuildJson;
  t.deepEqual(recorded.artifacts, result.artifacts);
  t.is(recorded.image.version, '1.0.0');
  t.regex(recorded.image.kernelVersion, /^\d+\.\d+\.\d+-\d+-cloud-amd64$/);
  t.deepEqual(recorded.disk.partitions.map((p) => p.name), ['boot', 'rootA', 'rootB', 'persist']);
  for (const name of ['disk.img', 'rootfs.img']) {
    const file = join(dir, 'one', name);
    t.is(recorded.artifacts[name]?.sha256, await hashFile(file), name);
    t.is(recorded.artifacts[name]?.size, (await stat(file)).size, name);
  }
  t.is(recorded.artifacts['disk.img']?.size, recorded.disk.size);
  // rootA starts with exactly rootfs.img
  const rootA = recorded.disk.partitions.find((p) => p.name === 'rootA');
  const rootfsSize = recorded.artifacts['rootfs.img']?.size ?? 0;
  t.true(rootfsSize <= (rootA?.size ?? 0));
  const copy = await extract(join(dir, 'one', 'disk.img'), rootA?.offset ?? 0, rootfsSize, join(dir, 'rootA-copy.img'));
  t.is(recorded.artifacts['rootfs.img']?.sha256, await hashFile(copy));
});

buildTest('two builds with the same inputs and SOURCE_DATE_EPOCH are byte-identical', async (t) => {
  const one = await firstBuild();
  const two = await build(join(dir, 'two'), ['--format', 'qcow2']);
  t.is(two.artifacts['disk.img']?.sha256, one.artifacts['disk.img']?.sha256);
  t.is(two.artifacts['rootfs.img']?.sha256, one.artifacts['rootfs.img']?.sha256);
  const info = await execa('qemu-img', ['info', '--output=json', join(dir, 'two', 'disk.qcow2')]);
  t.is((JSON.parse(info.stdout) as { format: string }).format, 'qcow2');
});

// Bad input: a clear error code, and the output directory is neither created nor touched.
const badInputs: [string, string[], Record<string, string>, string][] = [
  ['a missing host tool names the tool and its package', ['images/minimal', '--layout', 'small'], { KUBEOS_PATH: '/nonexistent' }, 'E_TOOL_MISSING'],
  ['a layout that does not fit its disk size', ['images/minimal', '--layout', 'test/build/fixtures/does-not-fit.json'], {}, 'E_LAYOUT_DOES_NOT_FIT'],
  ['a root filesystem bigger than its slot', ['images/minimal', '--layout', 'test/build/fixtures/tiny-slots.json'], {}, 'E_ROOTFS_TOO_BIG'],
  ['an unknown filesystem type', ['images/minimal', '--layout', 'test/build/fixtures/xfs-persist.json'], {}, 'E_FS_UNKNOWN'],
  ['a malformed image definition', ['test/build/fixtures/bad-image'], {}, 'E_IMAGE_INVALID'],
  ['a layout that does not exist', ['images/minimal', '--layout', 'nope'], {}, 'E_LAYOUT_INVALID'],
];

badInputs.forEach(([title, args, extraEnv, code], index) => {
  buildTest(`bad input fails cleanly: ${title}`, async (t) => {
    const parent = join(dir, `bad-${index}`);
    const out = join(parent, 'out');
    await mkdir(out, { recursive: true });
    // an earlier build's output: the failed build must leave it as it was
    await writeFile(join(out, 'build.json'), '{}\n');
    await writeFile(join(out, 'keep.txt'), 'earlier build');
    const result = await kubeos(['build', ...args, '--out', out, '--json'], { env: { ...env, ...extraEnv } });
    t.is(result.exitCode, 1);
    const error = jsonError(result.stdout);
    t.is(error.code, code);
    t.deepEqual((await readdir(out)).sort(), ['build.json', 'keep.txt']);
    t.deepEqual(await readdir(parent), ['out']);
    if (code === 'E_TOOL_MISSING') t.true((error.details?.['packages'] as string[]).includes('e2fsprogs'));
  });
});

test('a build never replaces a directory kubeos did not make (--out . would have deleted the checkout)', async (t) => {
  const out = join(dir, 'photos');
  await mkdir(out, { recursive: true });
  await writeFile(join(out, 'holiday.jpg'), 'not a build');
  const result = await kubeos(['build', 'images/minimal', '--layout', 'small', '--out', out, '--json'], { env });
  t.is(result.exitCode, 2);
  const error = jsonError(result.stdout);
  t.is(error.code, 'E_USAGE');
  t.like(error.details, { out, entries: ['holiday.jpg'] });
  t.deepEqual(await readdir(out), ['holiday.jpg']);
  t.is(await readFile(join(out, 'holiday.jpg'), 'utf8'), 'not a build');
});

test('the malformed image definition error lists every problem', async (t) => {
  const result = await kubeos(['build', 'test/build/fixtures/bad-image', '--out', join(dir, 'never'), '--json']);
  const error = jsonError(result.stdout);
  t.deepEqual((error.details?.['problems'] as { path: string }[]).map((p) => p.path).sort(), ['kernel.modules', 'name', 'version']);
});

test.after.always('remove the temporary directories', removeFileTempDirs);
