/**
 * Debian's kernel package, fetched once with `apt-get download` and unpacked into a cache outside
 * the repository (KUBEOS_CACHE_DIR, else $XDG_CACHE_HOME/kubeos, else ~/.cache/kubeos).
 */
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
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

/**
 * What apt resolves names from: while none of these changed, a name resolves as it did last
 * time (`apt-get update` renames new list files into the lists directory; the preferences pick
 * the candidate version). apt's own binary cache is often turned off (Debian's container
 * images), which is why apt-cache parses every list each time.
 */
const aptStampPaths = ['/var/lib/apt/lists', '/etc/apt/preferences', '/etc/apt/preferences.d', '/etc/apt/sources.list', '/etc/apt/sources.list.d'];

async function aptStamp(paths: readonly string[]): Promise<string> {
  const parts: string[] = [];
  for (const path of paths) {
    const info = await stat(path).catch(() => undefined);
    parts.push(info === undefined ? `${path}:none` : `${path}:${info.ino}:${info.size}:${info.mtimeMs}`);
  }
  return parts.join(' ');
}

type Resolutions = Record<string, { stamp: string; package: string }>;

/**
 * A meta package (linux-image-cloud-amd64) names its versioned package in its Depends. The answer
 * is kept in the cache with apt's stamp: apt-cache took half a second of every build.
 */
export async function resolvePackage(name: string, options: { signal?: AbortSignal | undefined; stampPaths?: readonly string[] } = {}): Promise<string> {
  if (/^linux-image-\d/.test(name)) return name;
  const file = join(cacheDir(), 'kernels', 'resolved.json');
  const stamp = await aptStamp(options.stampPaths ?? aptStampPaths);
  // a damaged cache file is asked again, and rewritten
  const read: unknown = await readFile(file, 'utf8').then((text) => JSON.parse(text) as unknown).catch(() => undefined);
  const known: Resolutions = typeof read === 'object' && read !== null && !Array.isArray(read) ? read as Resolutions : {};
  const cached = known[name];
  if (cached?.stamp === stamp && typeof cached.package === 'string') return cached.package;
  let stdout: string;
  try {
    ({ stdout } = await run('apt-cache', ['depends', name], { timeoutMs: 60_000, signal: options.signal }));
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
  // a file of its own, renamed into place: builds running at once each write a whole one
  await mkdir(dirname(file), { recursive: true });
  const partial = `${file}.${randomUUID()}`;
  await writeFile(partial, `${JSON.stringify({ ...known, [name]: { stamp, package: match[1] } }, null, 2)}\n`);
  await rename(partial, file);
  return match[1];
}

export async function fetchKernel(packageName: string, options: { signal?: AbortSignal; onStep?: (step: string) => void } = {}): Promise<Kernel> {
  const pkg = await resolvePackage(packageName, { signal: options.signal });
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
