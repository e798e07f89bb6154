/** images/minimal with squashfs root slots: GRUB reads the kernel from squashfs, the initramfs mounts it read-only. */
import anyTest from 'ava';
import { join } from 'node:path';
import { buildImage } from '../builder/build/build-image.js';
import { QemuVm } from '../builder/qemu/start-qemu.js';
import { canRun, testNeeding } from '../test/helpers/tools.js';
import { bootTimeoutMs, copyDisk } from './build-fixture.js';
import { makeFileTempDir, removeFileTempDirs } from '../test/helpers/temp-dir.js';

const tools = ['qemu-system-x86_64', 'mksquashfs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox'] as const;
const test = await testNeeding(tools);
const build = (await canRun(tools))
  ? buildImage({ image: 'images/minimal', layout: 'small-squashfs', out: join(await makeFileTempDir('kubeos-qemu-squashfs-'), 'out'), sourceDateEpoch: 1_700_000_000 })
  : new Promise<never>(() => {});

test.serial('an image with a squashfs root boots slot A read-only', async (t) => {
  const image = await build;
  const vm = await QemuVm.start({ disk: await copyDisk(image, 'squashfs'), log: join(image.out, 'squashfs', 'console.log') });
  t.teardown(() => vm.stop());
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, bootTimeoutMs), /booting slot A \(good\)/);
  t.is(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), 'kubeos: version=1.0.0 slot=A boot=good root=ro persist=rw');
  await vm.waitFor(/^kubeos: ready$/, 30_000);
  vm.send('echo "rootfs=$(awk \'$2 == "/" { print $3 }\' /proc/mounts)"');
  t.is(await vm.waitFor(/^rootfs=/, 30_000), 'rootfs=squashfs');
});

anyTest.after.always('remove the temporary directories', removeFileTempDirs);
