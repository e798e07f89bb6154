/**
 * What `bundle create --rootfs` was given: a bundle carries a filesystem image that hosts write to a
 * slot and boot, so anything else (a README, a tarball) is refused before it is signed.
 */
import { open } from 'node:fs/promises';
import { KubeosError } from '../../runtime/core/errors.js';

/** ext4 (its superblock magic 0xEF53 at byte 1080) or squashfs ("hsqs" at byte 0), else undefined. */
export function filesystemOf(head: Buffer): 'ext4' | 'squashfs' | undefined {
  if (head.length >= 4 && head.toString('latin1', 0, 4) === 'hsqs') return 'squashfs';
  if (head.length >= 1082 && head.readUInt16LE(1080) === 0xef53) return 'ext4';
  return undefined;
}

export async function checkRootfsImage(path: string): Promise<'ext4' | 'squashfs'> {
  const handle = await open(path, 'r').catch((cause: unknown) => {
    throw new KubeosError('E_USAGE', `--rootfs ${path}: cannot read it (${(cause as NodeJS.ErrnoException).code ?? String(cause)})`, { cause, details: { path } });
  });
  let head: Buffer;
  try {
    if (!(await handle.stat()).isFile()) {
      throw new KubeosError('E_USAGE', `--rootfs ${path} is a directory, not a filesystem image`, {
        hint: 'give the rootfs.img that kubeos build writes (a directory tree goes to kubeos build as a rootfs source)',
        details: { path },
      });
    }
    head = Buffer.alloc(2048);
    const { bytesRead } = await handle.read(head, 0, head.length, 0);
    head = head.subarray(0, bytesRead);
  } finally {
    await handle.close();
  }
  const kind = filesystemOf(head);
  if (kind === undefined) {
    const text = head.subarray(0, 64);
    const looksText = text.length > 0 && text.every((b) => b === 9 || b === 10 || b === 13 || (b >= 32 && b < 127));
    throw new KubeosError('E_USAGE', `--rootfs ${path} is not an ext4 or squashfs filesystem image (${head.length === 0 ? 'it is empty' : looksText ? `it starts with text: ${JSON.stringify(text.toString('latin1').slice(0, 30))}` : 'no ext4 or squashfs superblock'})`, {
      hint: 'give the rootfs.img that kubeos build writes (next to its build.json)',
      details: { path },
    });
  }
  return kind;
}
