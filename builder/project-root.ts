/** Where the kubeos package lives (for built-in layouts and images), from source or from dist/. */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

let cached: string | undefined;

export function projectRoot(): string {
  if (cached !== undefined) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json')) || !existsSync(join(dir, 'layouts'))) {
    const parent = dirname(dir);
    if (parent === dir) throw new Error('kubeos: cannot find the package root (package.json next to layouts/)');
    dir = parent;
  }
  cached = dir;
  return dir;
}
