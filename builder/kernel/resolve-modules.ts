/** Module names → their .ko files with every dependency, dependencies first (`modinfo -F depends`). */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';

const normalize = (name: string) => name.replaceAll('-', '_');

async function indexModules(dir: string): Promise<Map<string, string>> {
  const index = new Map<string, string>();
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  for (const entry of entries) {
    if (entry.isFile() && entry.name.endsWith('.ko')) index.set(normalize(entry.name.slice(0, -3)), join(entry.parentPath, entry.name));
  }
  return index;
}

export async function resolveModules(modulesDir: string, wanted: readonly string[], signal?: AbortSignal): Promise<{ name: string; path: string }[]> {
  const index = await indexModules(modulesDir);
  const ordered: { name: string; path: string }[] = [];
  const visiting = new Set<string>();
  const done = new Set<string>();
  const visit = async (raw: string, wantedBy: string | undefined): Promise<void> => {
    const name = normalize(raw);
    if (done.has(name) || visiting.has(name)) return;
    const path = index.get(name);
    if (path === undefined) {
      throw new KubeosError('E_IMAGE_INVALID', `kernel module ${raw}${wantedBy ? ` (needed by ${wantedBy})` : ''} is not in ${modulesDir}`, {
        hint: 'it may be built into this kernel (then drop it from kernel.modules) or be named differently',
      });
    }
    visiting.add(name);
    const { stdout } = await run('modinfo', ['-F', 'depends', path], { timeoutMs: 30_000, signal });
    for (const dep of stdout.trim().split(',').filter(Boolean).sort()) await visit(dep, name);
    visiting.delete(name);
    done.add(name);
    ordered.push({ name, path });
  };
  for (const name of wanted) await visit(name, undefined);
  return ordered;
}
