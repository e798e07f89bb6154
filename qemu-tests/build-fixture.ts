/** Builds test images once per test process, with the small layout and a fixed SOURCE_DATE_EPOCH. */
import { join } from 'node:path';
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
