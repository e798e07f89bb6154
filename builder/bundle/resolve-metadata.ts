/**
 * What a bundle says about its image: flags win, then the `build.json` the image builder writes
 * next to the rootfs. Pure apart from reading that file; every missing field is reported at once.
 */
import { versionProblem } from '../../runtime/core/compare-versions.js';
import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';

export interface BundleMetadata {
  os: string;
  version: string;
  arch: string;
  compatible: string;
  kernelVersion: string;
}

export type MetadataFlags = Partial<BundleMetadata>;

/** The fields of build.json this command relies on. */
export interface BuildInfo {
  image?: { name?: unknown; version?: unknown; compatible?: unknown; arch?: unknown; kernelVersion?: unknown };
}

export const defaultArch = 'x86_64';

/** Reads `build.json` next to the rootfs; undefined when there is none. */
export async function readBuildInfo(rootfs: string): Promise<{ path: string; info: BuildInfo } | undefined> {
  const path = join(dirname(rootfs), 'build.json');
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new KubeosError('E_USAGE', `cannot read ${path}`, { cause: error });
  }
  try {
    return { path, info: JSON.parse(text) as BuildInfo };
  } catch (cause) {
    throw new KubeosError('E_USAGE', `${path} is not JSON`, { cause, details: { path } });
  }
}

const flagOf: Record<keyof BundleMetadata, string> = {
  os: '--os-name',
  version: '--image-version',
  arch: '--arch',
  compatible: '--compatible',
  kernelVersion: '--kernel-version',
};

export function resolveMetadata(flags: MetadataFlags, build: BuildInfo | undefined): BundleMetadata {
  const image = build?.image ?? {};
  const pick = (flag: string | undefined, fromBuild: unknown): string | undefined =>
    flag !== undefined && flag !== '' ? flag : typeof fromBuild === 'string' && fromBuild !== '' ? fromBuild : undefined;
  const resolved = {
    os: pick(flags.os, image.name),
    version: pick(flags.version, image.version),
    arch: pick(flags.arch, image.arch) ?? defaultArch,
    compatible: pick(flags.compatible, image.compatible),
    kernelVersion: pick(flags.kernelVersion, image.kernelVersion),
  };
  const missing = (Object.keys(flagOf) as (keyof BundleMetadata)[]).filter((key) => resolved[key] === undefined);
  if (missing.length > 0) {
    throw new KubeosError('E_USAGE', `bundle metadata missing: ${missing.map((key) => flagOf[key]).join(', ')}`, {
      hint: 'pass the flags, or keep the build.json written by kubeos build next to the rootfs',
      details: { missing: missing.map((key) => flagOf[key]) },
    });
  }
  const problem = versionProblem(resolved.version);
  if (problem !== undefined) {
    throw new KubeosError('E_USAGE', `--image-version: ${problem}`, { hint: 'hosts order releases by semantic version; a version like v1.5.0 would rank above 2.0.0 and block every release after it', details: { version: resolved.version } });
  }
  return resolved as BundleMetadata;
}

/** Creation time from SOURCE_DATE_EPOCH (seconds), so the same inputs give the same bytes. */
export function parseSourceDateEpoch(value: string | undefined): number | undefined {
  if (value === undefined || value === '') return undefined;
  if (!/^\d+$/.test(value)) {
    throw new KubeosError('E_USAGE', `SOURCE_DATE_EPOCH must be whole seconds since 1970, got "${value}"`);
  }
  return Number(value);
}
