/**
 * Build speed: `kubeos build images/minimal` against the floor of the same disk made by the real
 * tools in a shell of their own (run-floor.ts), from the same staged root tree and the same ESP
 * files: `mke2fs -d` of the root with kubeos's settings, `mkfs.vfat` + `mmd` + `mcopy` for the ESP,
 * `mke2fs` for persist, `sgdisk` for the GPT, `dd conv=sparse` of each partition into place and
 * `openssl dgst -sha256` of disk.img and rootfs.img (not sha256sum: Debian's coreutils hashes
 * about 3x slower here, without the CPU's SHA instructions). Staging the tree, the initramfs and
 * GRUB are left out of the floor (done once before it); kubeos does them in every build.
 */
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage, rootfsSize } from '../../builder/build/build-image.js';
import { makeInitramfs } from '../../builder/boot/make-initramfs.js';
import { sgdiskArgs } from '../../builder/disk/write-partition-table.js';
import { inodeCount } from '../../builder/disk/make-ext4.js';
import { loadImage } from '../../builder/image/load-image.js';
import { fetchKernel } from '../../builder/kernel/fetch-kernel.js';
import { loadLayout } from '../../builder/layout/load-layout.js';
import { partitionByRole, planDisk } from '../../builder/layout/plan-disk.js';
import { resolveModules } from '../../builder/kernel/resolve-modules.js';
import { stageAgent } from '../../builder/rootfs/stage-agent.js';
import { normalizeTimes, stageRootfs, type TreeStats } from '../../builder/rootfs/stage-rootfs.js';
import { findTool, run } from '../../runtime/core/exec.js';
import { median, row, runs, timeIt, type Bench } from './measure.js';
import { runFloor } from './run-floor.js';

const epoch = 1_700_000_000;
const rounds = 3;

// plain strings, not a template: the shell's ${...} must reach bash as written
const floorScript = [
  'tree=$1 work=$2 root_kib=$3 inodes=$4 esp_bytes=$5 fat=$6 persist_kib=$7 disk_bytes=$8 esp_at=$9 root_at=${10} persist_at=${11} efi=${12} cfg=${13} env=${14}',
  'shift 14',
  'rm -rf "$work"',
  'mkdir -p "$work"',
  'export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH MTOOLS_SKIP_CHECK=1 TZ=UTC',
  'mke2fs -q -F -t ext4 -b 4096 -I 256 -m 0 -L kubeos-root -E root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0 -O ^has_journal -N "$inodes" -d "$tree" "$work/rootfs.img" "${root_kib}k"',
  'truncate -s "$esp_bytes" "$work/esp.img"',
  'mkfs.vfat ${fat:+-F "$fat"} -n KUBEOS-ESP --invariant "$work/esp.img"',
  'mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT',
  'mcopy -i "$work/esp.img" -m -o "$efi" "$cfg" "$env" ::/EFI/BOOT/',
  'mke2fs -q -F -t ext4 -b 4096 -I 256 -m 0 -L kubeos-persist -E lazy_itable_init=0,lazy_journal_init=0 -O has_journal "$work/persist.img" "${persist_kib}k"',
  'truncate -s "$disk_bytes" "$work/disk.img"',
  'sgdisk "$@"',
  'dd if="$work/esp.img" of="$work/disk.img" bs=1M seek="$esp_at" oflag=seek_bytes conv=notrunc,sparse status=none',
  'dd if="$work/rootfs.img" of="$work/disk.img" bs=1M seek="$root_at" oflag=seek_bytes conv=notrunc,sparse status=none',
  'dd if="$work/persist.img" of="$work/disk.img" bs=1M seek="$persist_at" oflag=seek_bytes conv=notrunc,sparse status=none',
  'openssl dgst -sha256 "$work/disk.img" "$work/rootfs.img"',
].join('\n');

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-build-'));
  try {
    // warm the kernel cache: downloads are not what this measures
    await buildImage({ image: 'images/minimal', layout: 'small', out: join(dir, 'warm'), sourceDateEpoch: epoch });

    const image = await loadImage('images/minimal');
    const plan = planDisk(await loadLayout('small'));
    const esp = partitionByRole(plan, 'esp');
    const rootA = partitionByRole(plan, 'root-a');
    const persist = partitionByRole(plan, 'persist');
    const kernel = await fetchKernel(image.kernel.package);
    const busybox = (await findTool('busybox')) as string;
    const modules = await resolveModules(kernel.modulesDir, image.kernel.modules);
    const initramfs = await makeInitramfs({ busybox, modules, mtime: epoch, partitionNames: { esp: esp.name, rootA: rootA.name, rootB: partitionByRole(plan, 'root-b').name, persist: persist.name } });
    const tree = join(dir, 'tree');
    await stageRootfs({ image, tree, busybox, vmlinuz: kernel.vmlinuz, initramfs, kernelRelease: kernel.release, buildId: 'bench' });
    if (image.agent !== undefined) {
      await stageAgent({ tree, compatible: image.compatible, bootTries: 3, updateServer: undefined, channel: undefined, updates: 'channel', pollSeconds: 300, trustedKeys: [], slotPartitions: { A: 'rootA', B: 'rootB' } });
    }
    const stats: TreeStats = { entries: 0, blockBytes: 0 };
    const treeBytes = await normalizeTimes(tree, epoch, stats);
    const rootBytes = rootfsSize(treeBytes, rootA.size, stats);
    // the very ESP files the warm build wrote (GRUB, grub.cfg, grubenv), copied out of its disk
    const espFiles = join(dir, 'esp-files');
    await mkdir(espFiles);
    const espFile = (name: string) => join(espFiles, name);
    for (const name of ['BOOTX64.EFI', 'grub.cfg', 'grubenv']) {
      await run('mcopy', ['-i', `${join(dir, 'warm', 'disk.img')}@@${esp.offset}`, `::/EFI/BOOT/${name}`, espFile(name)], { env: { MTOOLS_SKIP_CHECK: '1' } });
    }
    const floorWork = join(dir, 'floor');
    const floorArgs = [
      tree, floorWork, String(Math.floor(rootBytes / 1024)), String(inodeCount(stats.entries, rootBytes)),
      String(esp.size), esp.size >= 64 * 1024 * 1024 ? '32' : '', String(Math.floor(persist.size / 1024)), String(plan.size),
      String(esp.offset), String(rootA.offset), String(persist.offset), espFile('BOOTX64.EFI'), espFile('grub.cfg'), espFile('grubenv'),
      ...sgdiskArgs(plan, join(floorWork, 'disk.img')),
    ];

    // alternating runs, medians: on a shared 2-core machine single runs swing by a third
    const kubeos: number[] = [];
    const floor: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const build = async () => {
        kubeos.push((await timeIt(() => buildImage({ image: 'images/minimal', layout: 'small', out: join(dir, 'b'), sourceDateEpoch: epoch }))).seconds);
        await rm(join(dir, 'b'), { recursive: true, force: true });
      };
      const tools = async () => {
        floor.push(await runFloor(floorScript, floorArgs, { env: { SOURCE_DATE_EPOCH: String(epoch) } }));
        await rm(floorWork, { recursive: true, force: true });
      };
      if (i % 2 === 0) { await build(); await tools(); } else { await tools(); await build(); }
    }
    return [row(`kubeos build images/minimal (small layout, warm kernel cache, median of ${rounds})`,
      'floor: mke2fs -d (same settings) + mkfs.vfat/mmd/mcopy + mke2fs persist + sgdisk + dd conv=sparse x3 + openssl dgst -sha256, in a shell, from the same staged tree',
      median(kubeos), median(floor), 's',
      `the build also stages the tree, makes the initramfs and GRUB, bundles the agent and pins inode times with debugfs; runs ${runs(kubeos)} vs ${runs(floor)}`)];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
