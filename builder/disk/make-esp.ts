/** The EFI system partition: FAT written into a file by mkfs.vfat, filled with mtools (no mount). */
import { rm, truncate, utimes, writeFile } from 'node:fs/promises';
import { run } from '../../runtime/core/exec.js';

export interface EspInput {
  file: string;
  size: number;
  label: string;
  volumeId: string;
  /** Files to place, destination path on the ESP (like "EFI/BOOT/BOOTX64.EFI") → source file. */
  files: Record<string, string>;
  epoch: number;
  signal?: AbortSignal;
}

export async function makeEsp(input: EspInput): Promise<void> {
  await rm(input.file, { force: true });
  await writeFile(input.file, '');
  await truncate(input.file, input.size);
  const env = { SOURCE_DATE_EPOCH: String(input.epoch), MTOOLS_SKIP_CHECK: '1', TZ: 'UTC' };
  const fat32 = input.size >= 64 * 1024 * 1024;
  // --invariant pins the label entry's time; -i after it still sets the volume id
  await run('mkfs.vfat', [...(fat32 ? ['-F', '32'] : []), '-n', input.label.toUpperCase().slice(0, 11), '--invariant', '-i', input.volumeId, input.file], { env, signal: input.signal, timeoutMs: 60_000 });
  const dirs = new Set<string>();
  for (const dest of Object.keys(input.files).sort()) {
    const parts = dest.split('/').slice(0, -1);
    for (let i = 1; i <= parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
  }
  for (const dir of [...dirs].sort()) await run('mmd', ['-i', input.file, `::/${dir}`], { env, signal: input.signal, timeoutMs: 60_000 });
  for (const [dest, src] of Object.entries(input.files).sort(([a], [b]) => (a < b ? -1 : 1))) {
    // mcopy -m keeps the source's mtime: pin it (the sources are build work files)
    await utimes(src, input.epoch, input.epoch);
    await run('mcopy', ['-i', input.file, '-m', '-o', src, `::/${dest}`], { env, signal: input.signal, timeoutMs: 60_000 });
  }
}
