/**
 * Lays out the root filesystem tree of a slot in a staging directory: busybox and its applet
 * links, the image's own files, /etc/os-release, the kernel and initramfs under /boot.
 */
import { chmod, copyFile, cp, lstat, lutimes, mkdir, readdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { run } from '../../runtime/core/exec.js';
import type { ImageDefinition } from '../image/image-definition.js';

/** Mount points and top-level directories every kubeos root has; persist and the ESP mount on two. */
const skeleton = ['bin', 'boot', 'boot/efi', 'dev', 'etc', 'lib', 'mnt', 'persist', 'proc', 'root', 'run', 'sbin', 'sys', 'tmp', 'usr/bin', 'usr/sbin', 'var'];

export interface StageInput {
  image: ImageDefinition;
  tree: string;
  busybox: string;
  vmlinuz: string;
  initramfs: Buffer;
  kernelRelease: string;
  buildId: string;
  /** Put busybox and its applets in (the default userland); false when a rootfs source brings one. */
  userland?: boolean;
}

export function renderOsRelease(image: ImageDefinition, buildId: string): string {
  return [
    'NAME="kubeos"',
    `ID=kubeos`,
    `VARIANT_ID=${image.name}`,
    `VERSION_ID=${image.version}`,
    `VERSION="${image.version} (${image.name})"`,
    `PRETTY_NAME="kubeos ${image.name} ${image.version}"`,
    `IMAGE_ID=${image.name}`,
    `IMAGE_VERSION=${image.version}`,
    `BUILD_ID=${buildId}`,
    `KUBEOS_COMPATIBLE=${image.compatible}`,
    '',
  ].join('\n');
}

export async function stageRootfs(input: StageInput, signal?: AbortSignal): Promise<void> {
  const { tree } = input;
  for (const dir of skeleton) await mkdir(join(tree, dir), { recursive: true });
  await chmod(join(tree, 'tmp'), 0o1777);
  await chmod(join(tree, 'root'), 0o700);

  if (input.userland !== false) await stageBusybox(tree, input.busybox, signal);

  for (const files of input.image.files) {
    await cp(files, tree, { recursive: true, verbatimSymlinks: true, force: true, preserveTimestamps: false });
  }
  // os-release lives in the read-only /usr (the /etc overlay persists across upgrades)
  await mkdir(join(tree, 'usr/lib/kubeos'), { recursive: true });
  await writeFile(join(tree, 'usr/lib/os-release'), renderOsRelease(input.image, input.buildId));
  await symlink('../usr/lib/os-release', join(tree, 'etc/os-release'));
  await writeFile(join(tree, 'usr/lib/kubeos/image.json'), `${JSON.stringify({
    name: input.image.name,
    version: input.image.version,
    compatible: input.image.compatible,
    arch: input.image.arch,
    kernelVersion: input.kernelRelease,
  }, null, 2)}\n`);
  await copyFile(input.vmlinuz, join(tree, 'boot/vmlinuz'));
  await writeFile(join(tree, 'boot/initrd.img'), input.initramfs);
  await chmod(join(tree, 'boot/vmlinuz'), 0o644);
}

async function stageBusybox(tree: string, busybox: string, signal?: AbortSignal): Promise<void> {
  await copyFile(busybox, join(tree, 'bin/busybox'));
  await chmod(join(tree, 'bin/busybox'), 0o755);
  const { stdout } = await run('busybox', ['--list-full'], { timeoutMs: 30_000, signal });
  for (const applet of stdout.split('\n').map((l) => l.trim()).filter(Boolean).sort()) {
    if (applet === 'bin/busybox') continue;
    const link = join(tree, applet);
    await mkdir(dirname(link), { recursive: true });
    await symlink('/bin/busybox', link).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'EEXIST') throw error;
    });
  }
}

/** What a tree takes on ext4 beyond its bytes: an inode per entry, whole 4 KiB blocks. */
export interface TreeStats {
  entries: number;
  /** Bytes in 4 KiB blocks: files rounded up, a block per directory and per symlink too long to sit in its inode. */
  blockBytes: number;
}

/**
 * Sets every timestamp in a tree to `epoch`, in sorted order, so mke2fs -d copies fixed times.
 * Returns the bytes of file data; `stats`, when given, gets the entry count and block footprint.
 */
export async function normalizeTimes(root: string, epoch: number, stats?: TreeStats): Promise<number> {
  let bytes = 0;
  const block = 4096;
  const walk = async (dir: string): Promise<void> => {
    const names = (await readdir(dir)).sort();
    if (stats) stats.blockBytes += block;
    for (const name of names) {
      const path = join(dir, name);
      const info = await lstat(path);
      if (stats) stats.entries++;
      if (info.isDirectory()) await walk(path);
      else {
        bytes += info.size;
        if (stats && (info.isFile() || (info.isSymbolicLink() && info.size > 59))) stats.blockBytes += Math.ceil(info.size / block) * block;
      }
      await lutimes(path, epoch, epoch);
    }
  };
  await walk(root);
  await lutimes(root, epoch, epoch);
  return bytes;
}
