/** A fresh image boots slot A under UEFI + GRUB + Linux, and persist keeps data across a reboot. */
import anyTest from 'ava';
import { join } from 'node:path';
import { QemuVm } from '../builder/qemu/start-qemu.js';
import { canRun, testNeeding } from '../test/helpers/tools.js';
import { bootTimeoutMs, buildTestImage, copyDisk } from './build-fixture.js';
import { removeFileTempDirs } from '../test/helpers/temp-dir.js';

const tools = ['qemu-system-x86_64', 'mke2fs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox'] as const;
const test = await testNeeding(tools);
const build = (await canRun(tools)) ? buildTestImage() : new Promise<never>(() => {});

test.serial('a fresh image boots slot A with its version, root read-only and persist read-write', async (t) => {
  const image = await build;
  const vm = await QemuVm.start({ disk: await copyDisk(image, 'fresh'), log: join(image.out, 'fresh', 'console.log') });
  t.teardown(() => vm.stop());
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, bootTimeoutMs), /booting slot A \(good\)/);
  const status = await vm.waitFor(/^kubeos: version=/, bootTimeoutMs);
  t.is(status, 'kubeos: version=1.0.0 slot=A boot=good root=ro persist=rw');
  await vm.waitFor(/^kubeos: ready$/, 30_000);
  vm.send('touch /probe 2>/dev/null; echo "root-write-rc=$?"');
  t.is(await vm.waitFor(/^root-write-rc=\d+$/, 30_000), 'root-write-rc=1');
});

test.serial('a file written to persist survives a reboot, and /etc changes live on persist', async (t) => {
  const image = await build;
  const vm = await QemuVm.start({ disk: await copyDisk(image, 'persist'), log: join(image.out, 'persist', 'console.log') });
  t.teardown(() => vm.stop());
  await vm.waitFor(/^kubeos: ready$/, bootTimeoutMs);
  vm.send('echo kept-across-reboot > /persist/note && echo site-setting > /etc/site.conf && sync && echo "written-$?"');
  t.is(await vm.waitFor(/^written-\d+$/, 30_000), 'written-0');
  vm.send('reboot');
  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /slot=A boot=good/);
  await vm.waitFor(/^kubeos: ready$/, 30_000);
  vm.send('echo "note=$(cat /persist/note) etc=$(cat /etc/site.conf)"');
  t.is(await vm.waitFor(/^note=/, 30_000), 'note=kept-across-reboot etc=site-setting');
});

anyTest.after.always('remove the temporary directories', removeFileTempDirs);
