/**
 * `kubeos build`: image definition + layout → disk.img (+ disk.qcow2), rootfs.img, build.json.
 * Everything is written into a sibling staging directory that replaces the output directory only
 * when the whole build succeeded, so a failed build leaves no half-written output behind.
 */
import { cp, mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { bootEnvToGrub, initialBootEnv } from '../../runtime/core/boot-env.js';
import { KubeosError } from '../../runtime/core/errors.js';
import { parseUpdateSource } from '../../runtime/core/channel/layout.js';
import { versionPattern } from '../../runtime/core/compare-versions.js';
import { findTool, requireTools, run, type Tool } from '../../runtime/core/exec.js';
import { encodeGrubEnv } from '../../runtime/core/grubenv.js';
import { hashFile } from '../../runtime/core/hash-file.js';
import { makeGrubEfi } from '../boot/make-grub-efi.js';
import { makeInitramfs } from '../boot/make-initramfs.js';
import { renderGrubConfig } from '../boot/render-grub-config.js';
import { makeEsp } from '../disk/make-esp.js';
import { inodeCount, makeExt4 } from '../disk/make-ext4.js';
import { makeSquashfs } from '../disk/make-squashfs.js';
import { splicePartition, writePartitionTable } from '../disk/write-partition-table.js';
import { loadImage } from '../image/load-image.js';
import { fetchKernel } from '../kernel/fetch-kernel.js';
import { resolveModules } from '../kernel/resolve-modules.js';
import { deriveUuid, deriveVolumeId } from '../layout/derive-uuid.js';
import { loadLayout } from '../layout/load-layout.js';
import { partitionByRole, planDisk, type DiskPlan } from '../layout/plan-disk.js';
import { stageAgent } from '../rootfs/stage-agent.js';
import { stageFactoryState } from './stage-factory-state.js';
import { normalizeTimes, stageRootfs, type TreeStats } from '../rootfs/stage-rootfs.js';
import type { StagingTree } from '../source/apply-layer.js';
import { copyTreeInto } from '../source/copy-tree.js';
import { bakeConfig } from '../rootfs/bake-config.js';
import { applyKernelArgs } from '../../runtime/core/os-config.js';
import { applyTimes, stageSource } from '../source/stage-source.js';

export const diskFormats = ['raw', 'qcow2'] as const;
export type DiskFormat = (typeof diskFormats)[number];

export interface BuildOptions {
  image: string;
  out: string;
  layout?: string;
  format?: DiskFormat;
  /** Public keys the image's agent trusts, added to the definition's agent.trustedKeys. */
  trustedKeys?: string[];
  /** Channel name the image's agent follows (overrides agent.channel; the older form, an index URL, also sets the server). */
  channel?: string;
  /** Base URL of the image server (overrides agent.updateServer). */
  updateServer?: string;
  /** Who starts upgrades: the host's daemon (`channel`) or only the cluster's operator (`cluster`). */
  updates?: 'channel' | 'cluster';
  /** Overrides the definition's version (release pipelines stamp it). */
  version?: string;
  sourceDateEpoch?: number;
  signal?: AbortSignal;
  onProgress?: (step: string, fraction?: number, bytes?: { done: number; total: number }) => void;
}

export interface BuildResult {
  out: string;
  image: { name: string; version: string; compatible: string; arch: string; kernelVersion: string; kernelPackage: string };
  layout: { name: string; file: string };
  sourceDateEpoch: number;
  disk: DiskPlan;
  artifacts: Record<string, { size: number; sha256: string }>;
  seconds: number;
}

const buildTools: Tool[] = ['ldd', 'zstd', 'mke2fs', 'debugfs', 'dumpe2fs', 'tune2fs', 'mkfs.vfat', 'mmd', 'mcopy', 'sgdisk', 'grub-mkimage', 'busybox', 'dpkg-deb', 'apt-get', 'apt-cache', 'modinfo'];

/**
 * rootfs.img holds the tree with room for filesystem overhead, not the whole slot: bundles and
 * slot writes then carry only what is there. A read-only root never needs free space.
 */
/**
 * The ext4 rootfs.img's size: the tree's bytes, or its block footprint and inode tables when
 * those are larger (many small files), plus room for metadata; never more than the slot.
 */
export function rootfsSize(treeBytes: number, slotSize: number, stats?: TreeStats): number {
  const footprint = Math.max(treeBytes * 1.15, stats === undefined ? 0 : stats.blockBytes * 1.1 + inodeCount(stats.entries, 0) * 256);
  const wanted = Math.ceil((footprint + 24 * 1024 * 1024) / (4 * 1024 * 1024)) * 4 * 1024 * 1024;
  return Math.min(wanted, slotSize);
}

/**
 * A build replaces its output directory only when it is one kubeos made (it holds a build.json) or
 * is empty: `--out .` or `--out ~/photos` must never delete what is there. Checked before any work.
 */
async function checkReplaceable(out: string): Promise<void> {
  const entries = await readdir(out).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    if (error.code === 'ENOTDIR') return null;
    throw error;
  });
  if (entries === undefined || (entries !== null && entries.length === 0)) return;
  if (entries !== null && entries.includes('build.json')) return;
  throw new KubeosError('E_USAGE', `--out ${out} ${entries === null ? 'is a file' : `holds ${entries.length} entr${entries.length === 1 ? 'y' : 'ies'} and no build.json`}: a build replaces its output directory, and this one was not made by kubeos build`, {
    hint: 'name a new or empty directory (or one an earlier kubeos build wrote)',
    details: { out, entries: entries === null ? null : entries.slice(0, 10) },
  });
}

export async function buildImage(options: BuildOptions): Promise<BuildResult> {
  const started = Date.now();
  const step = options.onProgress ?? (() => {});
  const signal = options.signal;
  const format = options.format ?? 'raw';
  const loaded = await loadImage(options.image);
  const image = options.version === undefined ? loaded : { ...loaded, version: options.version };
  if (!versionPattern.test(image.version)) {
    throw new KubeosError('E_USAGE', `--version must be a semantic version like 2.0.0, got ${JSON.stringify(image.version)}`);
  }
  const layout = await loadLayout(options.layout ?? image.layout);
  const plan = planDisk(layout);
  const rootFilesystem = partitionByRole(plan, 'root-a').filesystem;
  await requireTools([
    ...buildTools,
    ...(format === 'qcow2' ? ['qemu-img' as const] : []),
    ...(rootFilesystem === 'squashfs' ? ['mksquashfs' as const] : []),
    ...(image.rootfs === undefined ? [] : ['depmod' as const]),
    ...(image.rootfs?.type === 'mmdebstrap' ? ['mmdebstrap' as const] : []),
  ]);
  const epoch = options.sourceDateEpoch ?? Math.floor(Date.now() / 1000);

  const out = resolve(options.out);
  await checkReplaceable(out);
  await mkdir(dirname(out), { recursive: true });
  const partial = join(dirname(out), `.${basename(out)}.partial-${process.pid}`);
  const work = join(partial, '.work');
  await rm(partial, { recursive: true, force: true });
  await mkdir(work, { recursive: true });
  try {
    step('fetching kernel');
    const kernel = await fetchKernel(image.kernel.package, { signal, onStep: step });
    step('resolving kernel modules');
    // the initramfs mounts the root slot: it needs the module of the layout's root filesystem
    const wantedModules = rootFilesystem === 'squashfs' && !image.kernel.modules.includes('squashfs') ? [...image.kernel.modules, 'squashfs'] : image.kernel.modules;
    const modules = await resolveModules(kernel.modulesDir, wantedModules, signal);
    const busybox = (await findTool('busybox')) as string;
    const names = {
      esp: partitionByRole(plan, 'esp').name,
      rootA: partitionByRole(plan, 'root-a').name,
      rootB: partitionByRole(plan, 'root-b').name,
      persist: partitionByRole(plan, 'persist').name,
    };
    step('making initramfs');
    const initramfs = await makeInitramfs({ busybox, modules, partitionNames: names, mtime: epoch });

    step('staging root filesystem');
    const tree = join(work, 'rootfs');
    const buildId = deriveUuid(`${layout.seed}:${image.name}:${image.version}:${epoch}`, 'build').toLowerCase();
    let source: StagingTree | undefined;
    if (image.rootfs !== undefined) {
      step(`unpacking the root filesystem (${image.rootfs.type})`);
      source = await stageSource(image.rootfs, tree, { work: join(work, 'layers'), signal, onStep: step });
      // with what the layers removed; later removals (the builder's files) delete
      await rm(join(work, 'layers'), { recursive: true, force: true });
      source.removed = undefined;
    }
    // the builder's own files: straight into the tree, or staged apart and merged over a source
    // through the same confined resolution (a source's symlinks must not redirect them)
    const own = source === undefined ? tree : join(work, 'own');
    await stageRootfs({ image, tree: own, busybox, vmlinuz: kernel.vmlinuz, initramfs, kernelRelease: kernel.release, buildId, userland: source === undefined }, signal);
    if (image.agent !== undefined) {
      step('adding the agent (Node.js, bundled agent, keys)');
      await stageAgent({
        tree: own, compatible: image.compatible, bootTries: plan.bootTries, signal,
        ...parseUpdateSource('the agent settings', options.channel ?? image.agent.channel, options.updateServer ?? image.agent.updateServer),
        updates: options.updates ?? image.agent.updates,
        pollSeconds: image.agent.pollSeconds,
        trustedKeys: [...image.agent.trustedKeys, ...(options.trustedKeys ?? [])],
        slotPartitions: { A: names.rootA, B: names.rootB },
      });
    }
    if (image.config !== undefined) {
      step('baking the image\'s OS configuration into the root');
      await bakeConfig(own, image.config);
    }
    if (source !== undefined) {
      step('adding kernel modules');
      const modulesDir = join(own, 'lib/modules', kernel.release);
      await cp(kernel.modulesDir, modulesDir, { recursive: true, verbatimSymlinks: true });
      await run('depmod', ['-b', own, kernel.release], { signal, timeoutMs: 5 * 60_000 });
      await copyTreeInto(source, own, { owner: { uid: 0, gid: 0 }, keepTimes: false, where: 'the builder\'s files' });
      await rm(own, { recursive: true, force: true });
    }
    const treeStats: TreeStats = { entries: 0, blockBytes: 0 };
    const treeBytes = await normalizeTimes(tree, epoch, treeStats);
    if (source !== undefined) await applyTimes(source);

    const rootA = partitionByRole(plan, 'root-a');
    const rootfsImg = join(partial, 'rootfs.img');
    if (rootFilesystem === 'squashfs') {
      step('writing rootfs.img (mksquashfs)');
      await makeSquashfs({ file: rootfsImg, tree, slotSize: rootA.size, epoch, meta: source?.meta, treeBytes, signal });
    } else {
      step('writing rootfs.img (mke2fs -d)');
      await makeExt4({
        file: rootfsImg, size: rootfsSize(treeBytes, rootA.size, treeStats), slotSize: rootA.size, label: 'kubeos-root', journal: false, tree, treeBytes, entries: treeStats.entries, epoch, signal,
        uuid: deriveUuid(layout.seed, `rootfs:${image.name}:${image.version}`), meta: source?.meta,
        // one checksum and directory-hash seed for every version of the image: unchanged blocks stay equal
        checksumSeed: deriveUuid(layout.seed, `rootfs:${image.name}`),
      });
    }

    // slot A's record and chunk index for persist (as the agent keeps them: its first delta need
    // not read slot A), cut from rootfs.img while the ESP is made by other processes
    const persistTree = join(work, 'persist');
    const factoryStaging = stageFactoryState(persistTree, rootfsImg, image.version, epoch, signal).then((staged) => ({ staged }), (error: unknown) => ({ error }));
    const esp = partitionByRole(plan, 'esp');
    const espImg = join(work, 'esp.img');
    try {
      step('writing EFI system partition');
      const grubEfi = join(work, 'BOOTX64.EFI');
      await makeGrubEfi(grubEfi, signal);
      const grubCfg = join(work, 'grub.cfg');
      await writeFile(grubCfg, renderGrubConfig({
        slotPartitions: { A: rootA.number, B: partitionByRole(plan, 'root-b').number },
        bootTries: plan.bootTries,
        kernel: '/boot/vmlinuz',
        initrd: '/boot/initrd.img',
        cmdline: image.config === undefined ? image.kernel.cmdline : applyKernelArgs(image.kernel.cmdline, image.config.kernelArgs),
        rootFilesystem,
        timeout: 0,
      }));
      const grubEnv = join(work, 'grubenv');
      await writeFile(grubEnv, encodeGrubEnv(bootEnvToGrub(initialBootEnv)));
      await makeEsp({
        file: espImg, size: esp.size, label: 'KUBEOS-ESP', volumeId: deriveVolumeId(layout.seed, 'esp'), epoch, signal,
        files: { 'EFI/BOOT/BOOTX64.EFI': grubEfi, 'EFI/BOOT/grub.cfg': grubCfg, 'EFI/BOOT/grubenv': grubEnv },
      });
    } catch (error) {
      await factoryStaging;
      throw error;
    }
    const factory = await factoryStaging;
    if ('error' in factory) throw factory.error;

    step('writing persist');
    const persist = partitionByRole(plan, 'persist');
    const persistImg = join(work, 'persist.img');
    const persistStats: TreeStats = { entries: 0, blockBytes: 0 };
    const persistBytes = await normalizeTimes(persistTree, epoch, persistStats);
    await makeExt4({
      file: persistImg, size: persist.size, label: 'kubeos-persist', uuid: persist.fsUuid, journal: true, epoch, signal,
      tree: persistTree, treeBytes: persistBytes, entries: persistStats.entries, meta: factory.staged.meta,
    });

    step('writing disk.img');
    const diskImg = join(partial, 'disk.img');
    await writePartitionTable(plan, diskImg, signal);
    await splicePartition(diskImg, esp.offset, espImg, undefined, signal);
    await splicePartition(diskImg, rootA.offset, rootfsImg, (done, total) => step('writing disk.img', done / total), signal);
    await splicePartition(diskImg, persist.offset, persistImg, undefined, signal);
    if (format === 'qcow2') {
      step('converting to qcow2');
      await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', diskImg, join(partial, 'disk.qcow2')], { signal, timeoutMs: 10 * 60_000 });
    }
    await rm(work, { recursive: true, force: true });

    step('hashing artifacts');
    const artifacts: BuildResult['artifacts'] = {};
    for (const name of ['disk.img', ...(format === 'qcow2' ? ['disk.qcow2'] : [])]) {
      const path = join(partial, name);
      artifacts[name] = { size: (await stat(path)).size, sha256: await hashFile(path, signal) };
    }
    // hashed once, with slot A's record for persist (stage-factory-state.ts)
    artifacts['rootfs.img'] = { size: factory.staged.state.size, sha256: factory.staged.state.sha256 };
    const result: BuildResult = {
      out,
      image: { name: image.name, version: image.version, compatible: image.compatible, arch: image.arch, kernelVersion: kernel.release, kernelPackage: kernel.package },
      layout: { name: layout.name, file: layout.file },
      sourceDateEpoch: epoch,
      disk: plan,
      artifacts,
      seconds: 0,
    };
    const { out: _out, seconds: _seconds, ...recorded } = result;
    await writeFile(join(partial, 'build.json'), `${JSON.stringify(recorded, null, 2)}\n`);

    const old = join(dirname(out), `.${basename(out)}.old-${process.pid}`);
    const existed = await stat(out).then(() => true, () => false);
    if (existed) await rename(out, old);
    await rename(partial, out);
    if (existed) await rm(old, { recursive: true, force: true });
    step('done');
    return { ...result, seconds: (Date.now() - started) / 1000 };
  } catch (error) {
    await rm(partial, { recursive: true, force: true });
    throw error;
  }
}
