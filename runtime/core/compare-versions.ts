/**
 * Versions of images, bundles, channels and OSUpgrades are semantic versions, read and ordered by
 * the semver package: exactly "MAJOR.MINOR.PATCH", optionally "-prerelease" and "+build", no "v".
 */
import semver from 'semver';
import { KubeosError } from './errors.js';

/**
 * semver.org's own pattern, for where no code runs: deploy/crd-osupgrade.yaml carries it (a test
 * checks they agree) so the API server refuses what isVersion refuses.
 */
export const versionPattern = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

/** True for a semantic version written exactly: semver.valid alone also takes "v1.5.0", "=1.5.0" and " 1.5.0". */
export function isVersion(value: unknown): value is string {
  return typeof value === 'string' && /^\d/.test(value) && value.trim() === value && semver.valid(value) !== null;
}

/** Why `value` (named `what`) is not a version, for an error; undefined when it is one. */
export function versionProblem(value: unknown): string | undefined {
  if (isVersion(value)) return undefined;
  if (typeof value === 'string' && /^v\d/.test(value) && isVersion(value.slice(1))) return `${JSON.stringify(value)} is not a semantic version: write ${value.slice(1)}, without the "v"`;
  return `${JSON.stringify(value)} is not a semantic version like 1.4.0 or 2.0.0-rc.1`;
}

/** Orders two versions (build metadata ignored, a pre-release before its release); throws on a non-version. */
export function compareVersions(a: string, b: string): number {
  for (const v of [a, b]) {
    const problem = versionProblem(v);
    if (problem !== undefined) throw new KubeosError('E_USAGE', `cannot order versions: ${problem}`);
  }
  return semver.compare(a, b);
}
