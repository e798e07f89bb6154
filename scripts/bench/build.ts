/** Build speed: `kubeos build images/minimal` against `mke2fs -d` of the same root tree (the floor). */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildImage, rootfsSize } from '../../builder/build/build-image.js';
import { makeInitramfs } from '../../builder/boot/make-initramfs.js';
import { loadImage } from '../../builder/image/load-image.js';
import { fetchKernel } from '../../builder/kernel/fetch-kernel.js';
import { resolveModules } from '../../builder/kernel/resolve-modules.js';
import { stageAgent } from '../../builder/rootfs/stage-agent.js';
import { normalizeTimes, stageRootfs } from '../../builder/rootfs/stage-rootfs.js';
import { findTool, run } from '../../runtime/core/exec.js';
import { row, timeIt, type Bench } from './measure.js';

const epoch = 1_700_000_000;
const runs = 3;

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-build-'));
  try {
    // warm the kernel cache: downloads are not what this measures
    await buildImage({ image: 'images/minimal', layout: 'small', out: join(dir, 'warm'), sourceDateEpoch: epoch });
    let buildSeconds = 0;
    for (let i = 0; i < runs; i++) {
      buildSeconds += (await timeIt(() => buildImage({ image: 'images/minimal', layout: 'small', out: join(dir, `b${i}`), sourceDateEpoch: epoch }))).seconds;
    }

    const image = await loadImage('images/minimal');
    const kernel = await fetchKernel(image.kernel.package);
    const busybox = (await findTool('busybox')) as string;
    const modules = await resolveModules(kernel.modulesDir, image.kernel.modules);
    const initramfs = await makeInitramfs({ busybox, modules, mtime: epoch, partitionNames: { esp: 'boot', rootA: 'rootA', rootB: 'rootB', persist: 'persist' } });
    const tree = join(dir, 'tree');
    await stageRootfs({ image, tree, busybox, vmlinuz: kernel.vmlinuz, initramfs, kernelRelease: kernel.release, buildId: 'bench' });
    if (image.agent !== undefined) {
      await stageAgent({ tree, compatible: image.compatible, bootTries: 3, updateServer: undefined, channel: undefined, updates: 'channel', pollSeconds: 300, trustedKeys: [], slotPartitions: { A: 'rootA', B: 'rootB' } });
    }
    const treeBytes = await normalizeTimes(tree, epoch);
    let floorSeconds = 0;
    for (let i = 0; i < runs; i++) {
      const file = join(dir, `floor${i}.img`);
      floorSeconds += (await timeIt(() => run('mke2fs', ['-q', '-F', '-t', 'ext4', '-d', tree, file, `${rootfsSize(treeBytes, 1 << 30) / 1024}k`]))).seconds;
    }
    return [row('kubeos build images/minimal (small layout, warm kernel cache)', 'mke2fs -d of the same root tree', buildSeconds / runs, floorSeconds / runs, 's', 'the build also makes the initramfs, bundles the agent, writes the ESP, persist and disk.img, and hashes them')];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
