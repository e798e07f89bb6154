/**
 * Names from archives and links inside a staging tree, resolved so nothing lands outside it.
 * Archive names must be relative without `..`; symlinks already in the tree are followed the way
 * the booted system would (absolute targets from the tree's root, `..` stopping at the root), by
 * this code and never by the OS, so a symlink planted by one layer cannot redirect a later write.
 */
import { lstatSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';

const maxLinkHops = 40;

function hostile(message: string, details: Record<string, unknown>): KubeosError {
  return new KubeosError('E_SOURCE_HOSTILE', message, {
    hint: 'the archive tries to write outside its root; rebuild it from a trusted source',
    details,
  });
}

/** An archive entry name as path segments ([] is the root); refuses absolute names and `..`. */
export function entrySegments(name: string, what: string, where: string): string[] {
  if (name.includes('\0')) throw hostile(`${where}: ${what} ${JSON.stringify(name)} contains a NUL byte`, { name, where });
  if (name.startsWith('/')) throw hostile(`${where}: ${what} ${JSON.stringify(name)} is an absolute path`, { name, where });
  const segments = name.split('/').filter((s) => s !== '' && s !== '.');
  if (segments.includes('..')) throw hostile(`${where}: ${what} ${JSON.stringify(name)} climbs out of the root with ".."`, { name, where });
  return segments;
}

/** Refuses a relative symlink target that, from `dir` (physical segments), climbs above the root. */
export function checkSymlinkTarget(dir: readonly string[], target: string, path: string, where: string): void {
  if (target.startsWith('/')) return;
  let depth = dir.length;
  for (const segment of target.split('/')) {
    if (segment === '..') depth--;
    else if (segment !== '' && segment !== '.') depth++;
    if (depth < 0) throw hostile(`${where}: symlink ${path} -> ${target} points outside the root`, { path, target, where });
  }
}

/**
 * Physical segments of a directory path inside `root`, following symlinks confined to the root.
 * Components that do not exist yet are kept as named (the caller creates them). The calls are
 * synchronous: a layer resolves a path for thousands of entries, and each lstat through the
 * thread pool took longer than the system call.
 */
export function resolveInRoot(root: string, segments: readonly string[], where: string): string[] {
  const resolved: string[] = [];
  const queue = [...segments];
  let hops = 0;
  let missing = false;
  while (queue.length > 0) {
    const segment = queue.shift() as string;
    if (segment === '' || segment === '.') continue;
    if (segment === '..') {
      resolved.pop();
      continue;
    }
    if (!missing) {
      const path = join(root, ...resolved, segment);
      const info = lstatSync(path, { throwIfNoEntry: false });
      if (info === undefined) {
        missing = true;
      } else if (info.isSymbolicLink()) {
        if (++hops > maxLinkHops) throw hostile(`${where}: too many levels of symlinks under ${segments.join('/')}`, { path: segments.join('/'), where });
        const target = readlinkSync(path);
        if (target.startsWith('/')) resolved.length = 0;
        queue.unshift(...target.split('/'));
        continue;
      }
    }
    resolved.push(segment);
  }
  return resolved;
}
