/**
 * Debian's kernel package, fetched once with `apt-get download` and unpacked into a cache outside
 * the repository (KUBEOS_CACHE_DIR, else $XDG_CACHE_HOME/kubeos, else ~/.cache/kubeos).
 */
import { mkdir, mkdtemp, readdir, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';

export interface Kernel {
  package: string;
  /** e.g. "6.1.0-56-cloud-amd64" */
  release: string;
  /** Unpacked package root. */
  root: string;
  vmlinuz: string;
  modulesDir: string;
}

export function cacheDir(): string {
  return process.env['KUBEOS_CACHE_DIR'] ?? join(process.env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'kubeos');
}

/** A meta package (linux-image-cloud-amd64) names its versioned package in its Depends. */
async function resolvePackage(name: string, signal?: AbortSignal): Promise<string> {
  if (/^linux-image-\d/.test(name)) return name;
  let stdout: string;
  try {
    ({ stdout } = await run('apt-cache', ['depends', name], { timeoutMs: 60_000, signal }));
  } catch (error) {
    throw new KubeosError('E_KERNEL_FETCH', `cannot resolve kernel package ${name} with apt-cache`, {
      cause: error,
      hint: 'run apt-get update once, then build again',
    });
  }
  const match = /Depends:\s*(linux-image-\d[^\s]*)/.exec(stdout);
  if (!match?.[1]) {
    throw new KubeosError('E_KERNEL_FETCH', `apt-cache knows no versioned kernel behind ${name}`, { hint: 'run apt-get update once, or name a versioned package like linux-image-6.1.0-56-cloud-amd64' });
  }
  return match[1];
}

export async function fetchKernel(packageName: string, options: { signal?: AbortSignal; onStep?: (step: string) => void } = {}): Promise<Kernel> {
  const pkg = await resolvePackage(packageName, options.signal);
  const unpacked = join(cacheDir(), 'kernels', pkg);
  const release = pkg.replace(/^linux-image-/, '');
  const kernel: Kernel = {
    package: pkg,
    release,
    root: unpacked,
    vmlinuz: join(unpacked, 'boot', `vmlinuz-${release}`),
    modulesDir: join(unpacked, 'lib', 'modules', release),
  };
  try {
    await readdir(kernel.modulesDir);
    return kernel;
  } catch {
    // not cached yet
  }
  const debs = join(cacheDir(), 'debs');
  await mkdir(debs, { recursive: true });
  let deb = (await readdir(debs)).find((f) => f.startsWith(`${pkg}_`) && f.endsWith('.deb'));
  if (deb === undefined) {
    options.onStep?.(`downloading ${pkg}`);
    // mkdtemp, not pid and time: builds in one process (parallel tests) start in the same millisecond
    const staging = await mkdtemp(join(debs, '.download-'));
    try {
      await run('apt-get', ['download', '-q', pkg], { cwd: staging, timeoutMs: 10 * 60_000, signal: options.signal });
      deb = (await readdir(staging)).find((f) => f.endsWith('.deb'));
      if (deb === undefined) throw new Error('apt-get download wrote no .deb');
      await rename(join(staging, deb), join(debs, deb));
    } catch (error) {
      throw new KubeosError('E_KERNEL_FETCH', `cannot download kernel package ${pkg}`, { cause: error, hint: 'check that apt-get can reach Debian\'s archive (apt-get update)' });
    } finally {
      await rm(staging, { recursive: true, force: true });
    }
  }
  options.onStep?.(`unpacking ${pkg}`);
  // Several builds may unpack at once (parallel tests, CI): each unpacks into its own directory
  // and renames it into place; the cache entry, once there, is never replaced or removed.
  await mkdir(join(cacheDir(), 'kernels'), { recursive: true });
  const tmp = await mkdtemp(`${unpacked}.tmp-`);
  try {
    await run('dpkg-deb', ['-x', join(debs, deb), tmp], { timeoutMs: 5 * 60_000, signal: options.signal });
    await rename(tmp, unpacked).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== 'ENOTEMPTY' && error.code !== 'EEXIST') throw error;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return kernel;
}
