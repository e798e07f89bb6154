/** Copies a dynamically linked host program into a root tree with every shared library it loads (per ldd), at the same paths. */
import { chmod, copyFile, mkdir } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';

export function parseLdd(output: string): string[] {
  const libs = new Set<string>();
  for (const line of output.split('\n')) {
    const arrow = /=>\s+(\/\S+)\s+\(/.exec(line);
    const bare = /^\s*(\/\S+)\s+\(/.exec(line);
    const path = arrow?.[1] ?? bare?.[1];
    if (path !== undefined) libs.add(path);
  }
  return [...libs].sort();
}

export async function copyBinary(tree: string, source: string, target: string, signal?: AbortSignal): Promise<string[]> {
  let output: string;
  try {
    ({ stdout: output } = await run('ldd', [source], { signal, timeoutMs: 30_000 }));
  } catch (error) {
    throw new KubeosError('E_IMAGE_INVALID', `cannot list the libraries of ${source} with ldd`, { cause: error });
  }
  const libs = parseLdd(output);
  for (const lib of libs) {
    await mkdir(join(tree, dirname(lib)), { recursive: true });
    await copyFile(lib, join(tree, lib));
    await chmod(join(tree, lib), 0o755);
  }
  await mkdir(join(tree, dirname(target)), { recursive: true });
  await copyFile(source, join(tree, target));
  await chmod(join(tree, target), 0o755);
  return libs;
}
