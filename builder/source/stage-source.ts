/**
 * Puts a `rootfs` source into a staging tree and returns what the tree cannot hold (owners, exact
 * modes, devices, xattrs) as a MetaList. A Debian root from mmdebstrap is built once and cached
 * outside the repository, keyed by its package list, suite, mirror and variant.
 */
import { createReadStream } from 'node:fs';
import { lutimes, mkdir, rename, rm, stat } from 'node:fs/promises';
import { createHash, randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { run } from '../../runtime/core/exec.js';
import { cacheDir } from '../kernel/fetch-kernel.js';
import { applyLayer, newStagingTree, type StagingTree } from './apply-layer.js';
import { copyTreeInto } from './copy-tree.js';
import { readBytes } from './open-layer.js';
import { sortedPaths } from './file-meta.js';
import { applyImageArchive } from './read-image-archive.js';
import type { RootfsSource } from './rootfs-source.js';

export interface StageSourceOptions {
  /**
   * Scratch space inside the build folder, on the root's filesystem: spooled layers, and what
   * layers remove (moved aside into `removed`, see StagingTree). The caller deletes it.
   */
  work: string;
  signal?: AbortSignal;
  onStep?: (step: string) => void;
}

/** Dropped from mmdebstrap roots: documentation a host never reads. */
const debianExcludes = ['/usr/share/doc/*', '/usr/share/man/*', '/usr/share/info/*', '/usr/share/lintian/*'];

export function mmdebstrapKey(source: Extract<RootfsSource, { type: 'mmdebstrap' }>): string {
  const key = JSON.stringify({ suite: source.suite, packages: [...source.packages].sort(), mirror: source.mirror ?? '', variant: source.variant, excludes: debianExcludes, arch: 'amd64' });
  return createHash('sha256').update(key).digest('hex').slice(0, 16);
}

export function mmdebstrapArgs(source: Extract<RootfsSource, { type: 'mmdebstrap' }>, out: string): string[] {
  const args = ['--mode=auto', '--format=tar', '--architectures=amd64', `--variant=${source.variant}`, '--quiet'];
  if (source.packages.length > 0) args.push(`--include=${[...source.packages].sort().join(',')}`);
  for (const exclude of debianExcludes) args.push(`--dpkgopt=path-exclude=${exclude}`);
  args.push(source.suite, out);
  if (source.mirror !== undefined) args.push(source.mirror);
  return args;
}

async function debianTar(source: Extract<RootfsSource, { type: 'mmdebstrap' }>, options: StageSourceOptions): Promise<string> {
  const dir = join(cacheDir(), 'rootfs');
  const file = join(dir, `mmdebstrap-${source.suite}-${mmdebstrapKey(source)}.tar`);
  if (await stat(file).then((s) => s.isFile(), () => false)) return file;
  options.onStep?.(`building a Debian ${source.suite} root with mmdebstrap (cached in ${dir})`);
  await mkdir(dir, { recursive: true });
  // unique per call: two builds in one process (parallel tests) may fill the same cache entry
  const partial = `${file}.partial-${randomUUID()}.tar`;
  try {
    // a fixed epoch: the cache must not depend on which build filled it
    await run('mmdebstrap', mmdebstrapArgs(source, partial), { signal: options.signal, timeoutMs: 30 * 60_000, env: { SOURCE_DATE_EPOCH: '0' } });
    await rename(partial, file);
  } catch (error) {
    await rm(partial, { force: true });
    throw new KubeosError('E_SOURCE_INVALID', `mmdebstrap could not build a Debian ${source.suite} root`, {
      cause: error, hint: 'check the package names and that Debian\'s archive is reachable (apt-get update)', details: { suite: source.suite },
    });
  }
  return file;
}

export async function stageSource(source: RootfsSource, root: string, options: StageSourceOptions): Promise<StagingTree> {
  const removed = join(options.work, 'removed');
  const tree = newStagingTree(root, removed);
  await mkdir(root, { recursive: true });
  await mkdir(removed, { recursive: true });
  switch (source.type) {
    case 'dir':
      await copyTreeInto(tree, source.path, { keepTimes: true, where: source.path });
      break;
    case 'tar':
      await applyLayer(tree, createReadStream(source.path, { highWaterMark: readBytes }), source.path, {}, options.signal);
      break;
    case 'oci':
    case 'docker-archive':
      await applyImageArchive(tree, source, options.work, options.signal);
      break;
    case 'mmdebstrap': {
      const file = await debianTar(source, options);
      await applyLayer(tree, createReadStream(file, { highWaterMark: readBytes }), file, {}, options.signal);
      // package file times say nothing about the image: the build's epoch instead
      for (const meta of tree.meta.values()) meta.mtime = undefined;
      break;
    }
  }
  return tree;
}

/** Gives the tree the source's mtimes (after normalizeTimes set the build's epoch everywhere). */
export async function applyTimes(tree: StagingTree): Promise<void> {
  for (const rel of sortedPaths(tree.meta).reverse()) {
    const mtime = tree.meta.get(rel)?.mtime;
    if (mtime !== undefined) await lutimes(join(tree.root, rel), mtime, mtime);
  }
}
