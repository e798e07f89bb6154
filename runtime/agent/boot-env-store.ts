/**
 * Reads and writes kubeos's variables in the GRUB environment block on the ESP. The block is
 * rewritten in place, like GRUB's own save_env: the file never disappears or changes size (a
 * rename on FAT is not atomic), and all variables sit in the block's first 512-byte sector, whose
 * write a disk performs whole. The write is synced and read back before it counts.
 */
import { open, readFile } from 'node:fs/promises';
import { bootEnvFromGrub, bootEnvToGrub, type BootEnv } from '../core/boot-env.js';
import { KubeosError } from '../core/errors.js';
import { decodeGrubEnv, encodeGrubEnv, grubEnvSize } from '../core/grubenv.js';

export async function readBootEnv(path: string): Promise<{ env: BootEnv; vars: Record<string, string> }> {
  let block: Buffer;
  try {
    block = await readFile(path);
  } catch (error) {
    throw new KubeosError('E_BOOTENV', `cannot read the boot environment ${path}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, {
      cause: error,
      hint: 'is the EFI system partition mounted (normally at /boot/efi)?',
    });
  }
  const vars = decodeGrubEnv(block);
  return { env: bootEnvFromGrub(vars), vars };
}

export async function writeBootEnv(path: string, env: BootEnv, keep: Record<string, string> = {}): Promise<void> {
  const block = encodeGrubEnv({ ...keep, ...bootEnvToGrub(env) });
  if (block.subarray(0, 512).lastIndexOf('\n') < block.lastIndexOf(Buffer.from('\n'))) {
    throw new KubeosError('E_BOOTENV', 'boot environment variables do not fit the first sector of the block; remove foreign variables');
  }
  const handle = await open(path, 'r+');
  try {
    const { size } = await handle.stat();
    if (size !== grubEnvSize) throw new KubeosError('E_BOOTENV', `${path} is ${size} bytes, not a ${grubEnvSize}-byte GRUB environment block`);
    await handle.write(block, 0, grubEnvSize, 0);
    await handle.datasync();
  } finally {
    await handle.close();
  }
  const back = await readFile(path);
  if (!back.equals(block)) throw new KubeosError('E_BOOTENV', `the boot environment ${path} did not read back as written`);
}
