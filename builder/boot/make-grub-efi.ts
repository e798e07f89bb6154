/** GRUB as a removable-media EFI binary (EFI/BOOT/BOOTX64.EFI) with the modules kubeos's grub.cfg uses. */
import { access } from 'node:fs/promises';
import { KubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';

export const grubModuleDir = '/usr/lib/grub/x86_64-efi';

export const grubModules = [
  'part_gpt', 'fat', 'ext2', 'squash4', 'normal', 'linux', 'echo', 'test', 'loadenv', 'regexp',
  'configfile', 'serial', 'terminal', 'efi_gop', 'all_video', 'gzio', 'search', 'search_label',
  'search_fs_uuid', 'reboot', 'halt', 'sleep', 'cat', 'ls',
];

/** `prefix` without a device: GRUB takes the device it was loaded from, so the ESP can move. */
export const grubPrefix = '/EFI/BOOT';

export async function makeGrubEfi(output: string, signal?: AbortSignal): Promise<void> {
  try {
    await access(grubModuleDir);
  } catch {
    throw new KubeosError('E_TOOL_MISSING', `GRUB's x86_64-efi modules are missing (${grubModuleDir})`, {
      hint: 'install with: apt-get install grub-efi-amd64-bin (or run scripts/install-deps.sh)',
      details: { missing: [grubModuleDir], packages: ['grub-efi-amd64-bin'] },
    });
  }
  await run('grub-mkimage', ['-O', 'x86_64-efi', '-d', grubModuleDir, '-p', grubPrefix, '-o', output, ...grubModules], { signal, timeoutMs: 60_000 });
}
