/** Builds test images once per test process, with the small layout and a fixed SOURCE_DATE_EPOCH. */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { buildImage, type BuildResult } from '../builder/build/build-image.js';
import { runCommand } from '../runtime/core/exec.js';
import { makeFileTempDir } from '../test/helpers/temp-dir.js';

export const bootTimeoutMs = 180_000;

export async function buildTestImage(options: { version?: string; image?: string; trustedKeys?: string[] } = {}): Promise<BuildResult> {
  const dir = await makeFileTempDir('kubeos-qemu-test-');
  return buildImage({
    image: options.image ?? 'images/minimal', layout: 'small', out: join(dir, 'out'), version: options.version,
    trustedKeys: options.trustedKeys, sourceDateEpoch: 1_700_000_000,
  });
}

/** A private copy of a built disk, so each test boots (and writes) its own; sparse, like the original. */
export async function copyDisk(build: BuildResult, name: string): Promise<string> {
  const target = join(build.out, `${name}.img`);
  await runCommand(['cp', '--sparse=always', '--', join(build.out, 'disk.img'), target]);
  return target;
}

/**
 * An image definition in `dir`: `base` (a folder holding image.json, by default images/minimal)
 * with `files` (absolute paths in the image → content) copied over its root last. The base's
 * `files` are rebased onto `dir`; a base with other relative paths (agent.trustedKeys) is not
 * supported here.
 */
export async function writeOverlayImage(dir: string, files: Record<string, Buffer>, base = 'images/minimal'): Promise<string> {
  const baseDir = resolve(base);
  const definition = JSON.parse(await readFile(join(baseDir, 'image.json'), 'utf8')) as Record<string, unknown>;
  const baseFiles = definition['files'] === undefined ? [] : ([definition['files']].flat() as string[]);
  delete definition['$schema'];
  definition['files'] = [...baseFiles.map((f) => relative(dir, join(baseDir, f))), 'overlay'];
  for (const [path, content] of Object.entries(files)) {
    const target = join(dir, 'overlay', path);
    await mkdir(dirname(target), { recursive: true });
    await writeFile(target, content);
  }
  await writeFile(join(dir, 'image.json'), `${JSON.stringify(definition, null, 2)}\n`);
  return dir;
}
