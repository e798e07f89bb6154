/**
 * The signed channel index: which bundle a channel currently names. `serial` only grows (a host
 * refuses a lower one: rollback), `expires` bounds how long a stale index is believed (freeze).
 * Signatures cover the canonical JSON of `signed`.
 */
import { isVersion, versionProblem } from '../compare-versions.js';
import type { KeyObject } from 'node:crypto';
import { canonicalJson } from '../crypto/canonical-json.js';
import type { TrustedKeys } from '../crypto/keys.js';
import { parseSignature, signBytes, verifySignature, type Signature } from '../crypto/signature.js';
import { isKubeosError, KubeosError } from '../errors.js';
import { bundlePathPattern, channelNamePattern } from './layout.js';

export const channelIndexType = 'kubeos-channel';
export const channelFormat = 1;

export interface ChannelSigned {
  type: typeof channelIndexType;
  format: typeof channelFormat;
  channel: string;
  /** Grows by one with every publish; never reused. */
  serial: number;
  /** ISO 8601 UTC. */
  published: string;
  expires: string;
  os: string;
  version: string;
  arch: string;
  compatible: string;
  bundle: {
    /** Relative to the base URL: bundles/<sha256>.kubeos. */
    path: string;
    size: number;
    sha256: string;
  };
  /** The current release first, then earlier ones (at most releaseHistoryLimit); absent in indexes published before releases were listed. */
  releases?: ChannelRelease[];
}

/** A release a channel offers: what an OSUpgrade may pin a fleet to, bound by the index's signature. */
export interface ChannelRelease {
  version: string;
  published: string;
  bundle: ChannelSigned['bundle'];
}

/** How many releases an index lists (the current one and the ones before it, newest first). */
export const releaseHistoryLimit = 10;

export interface ChannelIndex {
  signed: ChannelSigned;
  signatures: Signature[];
}

const isoUtc = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

export function validateChannelSigned(value: unknown): ChannelSigned {
  const problems: string[] = [];
  const s = (value ?? {}) as Record<string, unknown>;
  if (typeof value !== 'object' || value === null || Array.isArray(value)) problems.push('signed must be an object');
  if (s['type'] !== channelIndexType) problems.push(`signed.type must be "${channelIndexType}"`);
  if (s['format'] !== channelFormat) problems.push(`signed.format must be ${channelFormat}`);
  if (typeof s['channel'] !== 'string' || !channelNamePattern.test(s['channel'])) problems.push(`signed.channel must match ${channelNamePattern}`);
  if (typeof s['serial'] !== 'number' || !Number.isSafeInteger(s['serial']) || s['serial'] < 1) problems.push('signed.serial must be an integer >= 1');
  for (const key of ['published', 'expires']) if (typeof s[key] !== 'string' || !isoUtc.test(s[key])) problems.push(`signed.${key} must be an ISO 8601 UTC time`);
  for (const key of ['os', 'version', 'arch', 'compatible']) if (typeof s[key] !== 'string' || s[key] === '') problems.push(`signed.${key} must be a non-empty string`);
  if (typeof s['version'] === 'string' && s['version'] !== '' && !isVersion(s['version'])) problems.push(`signed.version: ${versionProblem(s['version'])}`);
  const b = (s['bundle'] ?? {}) as Record<string, unknown>;
  const path = typeof b['path'] === 'string' ? bundlePathPattern.exec(b['path']) : null;
  if (path === null) problems.push(`signed.bundle.path must match ${bundlePathPattern}`);
  if (typeof b['size'] !== 'number' || !Number.isSafeInteger(b['size']) || b['size'] < 0) problems.push('signed.bundle.size must be an integer >= 0');
  if (typeof b['sha256'] !== 'string' || !/^[0-9a-f]{64}$/.test(b['sha256'])) problems.push('signed.bundle.sha256 must be a sha256 hex string');
  else if (path !== null && path[1] !== b['sha256']) problems.push('signed.bundle.path must name signed.bundle.sha256');
  const releases = s['releases'];
  if (releases !== undefined) {
    if (!Array.isArray(releases) || releases.length === 0 || releases.length > releaseHistoryLimit) {
      problems.push(`signed.releases must list 1 to ${releaseHistoryLimit} releases`);
    } else {
      const seen = new Set<string>();
      for (const [i, r] of (releases as Array<Record<string, unknown>>).entries()) {
        const rb = (r?.['bundle'] ?? {}) as Record<string, unknown>;
        const rpath = typeof rb['path'] === 'string' ? bundlePathPattern.exec(rb['path']) : null;
        if (typeof r?.['version'] !== 'string' || r['version'] === '') problems.push(`signed.releases[${i}].version must be a non-empty string`);
        else if (!isVersion(r['version'])) problems.push(`signed.releases[${i}].version: ${versionProblem(r['version'])}`);
        else if (seen.has(r['version'])) problems.push(`signed.releases[${i}].version ${r['version']} is listed twice`);
        else seen.add(r['version']);
        if (typeof r?.['published'] !== 'string' || !isoUtc.test(r['published'])) problems.push(`signed.releases[${i}].published must be an ISO 8601 UTC time`);
        if (rpath === null || typeof rb['sha256'] !== 'string' || rpath[1] !== rb['sha256']) problems.push(`signed.releases[${i}].bundle must name a bundles/<sha256>.kubeos path and its sha256`);
        if (typeof rb['size'] !== 'number' || !Number.isSafeInteger(rb['size']) || rb['size'] < 0) problems.push(`signed.releases[${i}].bundle.size must be an integer >= 0`);
      }
      const first = (releases as Array<Record<string, any>>)[0];
      if (first?.['version'] !== s['version'] || first?.['bundle']?.sha256 !== b['sha256']) problems.push('signed.releases[0] must be the current version and bundle');
    }
  }
  if (problems.length > 0) {
    throw new KubeosError('E_CHANNEL_INVALID', `channel index is invalid: ${problems.join('; ')}`, { details: { problems } });
  }
  return value as ChannelSigned;
}

/** Every release a verified index offers, newest first (an index without a list offers its current one). */
export function releasesOf(signed: ChannelSigned): ChannelRelease[] {
  return signed.releases ?? [{ version: signed.version, published: signed.published, bundle: signed.bundle }];
}

/** The release for `version` in a verified index; E_VERSION_NOT_OFFERED naming what it does offer. */
export function findRelease(signed: ChannelSigned, version: string): ChannelRelease {
  const releases = releasesOf(signed);
  const found = releases.find((r) => r.version === version);
  if (found === undefined) {
    throw new KubeosError('E_VERSION_NOT_OFFERED', `channel ${signed.channel} does not offer version ${version} (signed serial ${signed.serial} lists ${releases.map((r) => r.version).join(', ')})`, {
      hint: `publish ${version} to channel ${signed.channel} first (kubeos publish), or target a version it lists`,
      details: { channel: signed.channel, version, offered: releases.map((r) => r.version), serial: signed.serial },
    });
  }
  return found;
}

/** The exact text uploaded as channels/<name>.json. */
export function signChannel(signed: ChannelSigned, privateKey: KeyObject): string {
  const valid = validateChannelSigned(signed);
  const index: ChannelIndex = { signed: valid, signatures: [signBytes(privateKey, Buffer.from(canonicalJson(valid)))] };
  return `${canonicalJson(index)}\n`;
}

export interface VerifyChannelOptions {
  trustedKeys: TrustedKeys;
  /** The highest serial this reader has accepted before; a lower one is a rollback. */
  lastSerial?: number | undefined;
  /** Injectable clock for the expiry check. */
  now?: () => Date;
  /** When set, the index must be for this channel (a beta index served as stable is refused). */
  channel?: string | undefined;
  /** The publisher reads the old index only for its serial; an expired one must not block it. */
  ignoreExpiry?: boolean;
}

/**
 * Parses and verifies a channel index. Errors: E_CHANNEL_INVALID (not an index), E_UNKNOWN_KEY (no
 * signature by a trusted key), E_SIGNATURE, E_CHANNEL_ROLLBACK, E_CHANNEL_EXPIRED.
 */
export function verifyChannel(text: string | Uint8Array, options: VerifyChannelOptions): ChannelSigned {
  let parsed: unknown;
  try {
    parsed = JSON.parse(typeof text === 'string' ? text : Buffer.from(text).toString('utf8'));
  } catch (cause) {
    throw new KubeosError('E_CHANNEL_INVALID', 'channel index is not JSON', { cause });
  }
  const index = parsed as Partial<ChannelIndex> | null;
  if (index === null || typeof index !== 'object' || !Array.isArray(index.signatures) || index.signed === undefined) {
    throw new KubeosError('E_CHANNEL_INVALID', 'channel index must be { signed, signatures: [...] }');
  }
  // Verify the bytes a signer would have produced from `signed`, before believing any field.
  const bytes = Buffer.from(canonicalJson(index.signed));
  const signatures = index.signatures.map((sig) => parseSignature(sig, 'channel index', 'E_CHANNEL_INVALID'));
  const trusted = signatures.filter((sig) => options.trustedKeys.has(sig.keyid));
  const first = trusted[0] ?? signatures[0];
  if (first === undefined) throw new KubeosError('E_SIGNATURE', 'channel index has no signatures');
  let verifiedBy: string | undefined;
  let failure: unknown;
  for (const sig of trusted.length > 0 ? trusted : [first]) {
    try {
      verifiedBy = verifySignature(bytes, sig, options.trustedKeys, 'channel index');
      break;
    } catch (error) {
      if (!isKubeosError(error)) throw error;
      failure ??= error;
    }
  }
  if (verifiedBy === undefined) throw failure;
  const signed = validateChannelSigned(index.signed);

  if (options.channel !== undefined && signed.channel !== options.channel) {
    throw new KubeosError('E_CHANNEL_INVALID', `channel index is for "${signed.channel}", expected "${options.channel}"`, {
      details: { expected: options.channel, actual: signed.channel },
    });
  }
  if (options.lastSerial !== undefined && signed.serial < options.lastSerial) {
    throw new KubeosError('E_CHANNEL_ROLLBACK', `channel serial went backwards: ${signed.serial} after ${options.lastSerial}`, {
      hint: 'a mirror or attacker is serving an old index; wait for the server to catch up',
      details: { expected: `>= ${options.lastSerial}`, actual: signed.serial },
    });
  }
  const now = (options.now ?? (() => new Date()))();
  if (!options.ignoreExpiry && now.getTime() >= Date.parse(signed.expires)) {
    throw new KubeosError('E_CHANNEL_EXPIRED', `channel index expired at ${signed.expires}`, {
      hint: 'the publisher must re-publish (kubeos publish) before an index expires; a frozen mirror looks like this',
      details: { expires: signed.expires, now: now.toISOString() },
    });
  }
  return signed;
}
