/**
 * image.json `config` baked into the read-only root: its files at their paths, its sysctls in
 * /etc/sysctl.d/80-image.conf and its limits in /etc/security/limits.d/80-image.conf (the agent's
 * own 90-kubeos.conf, from `kubeos agent config`, sorts after and wins). Kernel arguments go on
 * the command line in grub.cfg (applyKernelArgs, at the build).
 */
import { chmod, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { renderLimits, renderSysctl, type OSConfig } from '../../runtime/core/os-config.js';

const header = 'Baked in by kubeos build from the image definition\'s config.';

export async function bakeConfig(tree: string, config: OSConfig): Promise<void> {
  const files: { path: string; content: string; mode: number }[] = [...config.files];
  const sysctl = renderSysctl(config, header);
  if (sysctl !== undefined) files.push({ path: '/etc/sysctl.d/80-image.conf', content: sysctl, mode: 0o644 });
  const limits = renderLimits(config, header);
  if (limits !== undefined) files.push({ path: '/etc/security/limits.d/80-image.conf', content: limits, mode: 0o644 });
  for (const file of files) {
    const target = join(tree, file.path);
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, file.content);
    await chmod(target, file.mode);
  }
}
