/**
 * The bundle manifest: what an update is, who signed it and how to check its payload while it
 * streams. A bundle is a tar of three members, in this order: `manifest.json` (canonical JSON),
 * `manifest.sig` (a `{ keyid, sig }` JSON over the exact manifest bytes), `payload.img.zst`.
 */
import { isVersion, versionProblem } from '../compare-versions.js';
import { KubeosError } from '../errors.js';
import { checkChunkRule, type ChunkRule } from './chunk-index.js';
import { indexObjectBytes } from './chunk-index-object.js';

export const bundleFormat = 1;
export const manifestMember = 'manifest.json';
export const signatureMember = 'manifest.sig';
export const payloadMember = 'payload.img.zst';
/** Manifests stay small even for huge images (4 MiB chunks: ~70 bytes a chunk; an inline CDC index ~75 bytes a 64 KiB chunk). */
export const maxManifestBytes = 8 * 1024 * 1024;
export const maxSignatureBytes = 64 * 1024;
export const defaultChunkSize = 4 * 1024 * 1024;

export interface PayloadInfo {
  compression: 'zstd';
  /** Compressed size in bytes and sha256 (hex) of the compressed bytes. */
  size: number;
  sha256: string;
  uncompressedSize: number;
  uncompressedSha256: string;
  /** Every chunk but the last is exactly chunkSize uncompressed bytes. */
  chunkSize: number;
  /** sha256 (hex) of each uncompressed chunk, so a writer verifies what it writes as it goes. */
  chunks: string[];
  /**
   * Format 2 as first made: the content-defined chunk index of the uncompressed image, inline, for
   * delta installs. Optional and ignored by format 1 readers (their validator checks only the
   * fields it knows), so `format` stays 1 and a bundle carrying it installs on every host. Bundles
   * are now made with `indexObject` instead; this is still read.
   */
  index?: ChunkIndexInfo;
  /**
   * Format 2: the same index as a binary object in the chunk store (chunk-index-object.ts, 36 bytes
   * a chunk), named here by its size and sha256. Ignored by older readers like `index`. A manifest
   * carries one of the two, not both.
   */
  indexObject?: IndexObjectInfo;
}

/** `[length, sha256]` of each chunk in image order; offsets follow from the lengths. */
export type IndexedChunk = [length: number, sha256: string];

export type CdcRule = Extract<ChunkRule, { kind: 'cdc' }>;

export interface ChunkIndexInfo {
  rule: CdcRule;
  chunks: IndexedChunk[];
}

/** The chunk index stored apart, as `<store>/<sha256>.zst` like a chunk. */
export interface IndexObjectInfo {
  rule: CdcRule;
  /** Chunks in the index (entries, repeats included). */
  chunkCount: number;
  /** Bytes and sha256 (hex) of the encoded index, uncompressed: its name in the chunk store, as a chunk's. */
  size: number;
  sha256: string;
}

export interface BundleManifest {
  format: typeof bundleFormat;
  os: string;
  version: string;
  arch: string;
  /** A host installs a bundle only when this equals its own compatible string. */
  compatible: string;
  kernelVersion: string;
  /** ISO 8601 UTC, from SOURCE_DATE_EPOCH. */
  created: string;
  keyId: string;
  payload: PayloadInfo;
}

const hex64 = /^[0-9a-f]{64}$/;

interface Problem {
  path: string;
  message: string;
}

/** Validates an untrusted manifest, reporting every problem at once. */
export function validateManifest(value: unknown): BundleManifest {
  const problems: Problem[] = [];
  const add = (path: string, message: string) => problems.push({ path, message });
  const obj = (v: unknown, path: string): Record<string, unknown> => {
    if (v === null || typeof v !== 'object' || Array.isArray(v)) {
      add(path, 'must be an object');
      return {};
    }
    return v as Record<string, unknown>;
  };
  const str = (o: Record<string, unknown>, key: string, path: string, pattern?: RegExp) => {
    const v = o[key];
    if (typeof v !== 'string' || v.length === 0) add(`${path}.${key}`, 'must be a non-empty string');
    else if (pattern !== undefined && !pattern.test(v)) add(`${path}.${key}`, `must match ${pattern}`);
  };
  const int = (o: Record<string, unknown>, key: string, path: string, min: number) => {
    const v = o[key];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) add(`${path}.${key}`, `must be an integer >= ${min}`);
  };

  const m = obj(value, '$');
  if (m['format'] !== bundleFormat) add('$.format', `must be ${bundleFormat}`);
  for (const key of ['os', 'version', 'arch', 'compatible', 'kernelVersion']) str(m, key, '$');
  if (typeof m['version'] === 'string' && m['version'] !== '' && !isVersion(m['version'])) add('$.version', versionProblem(m['version']) ?? 'must be a semantic version');
  str(m, 'created', '$', /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/);
  str(m, 'keyId', '$', hex64);
  const p = obj(m['payload'], '$.payload');
  if (p['compression'] !== 'zstd') add('$.payload.compression', 'must be "zstd"');
  int(p, 'size', '$.payload', 0);
  int(p, 'uncompressedSize', '$.payload', 0);
  int(p, 'chunkSize', '$.payload', 4096);
  str(p, 'sha256', '$.payload', hex64);
  str(p, 'uncompressedSha256', '$.payload', hex64);
  const chunks = p['chunks'];
  if (!Array.isArray(chunks)) add('$.payload.chunks', 'must be an array of sha256 hex strings');
  else {
    chunks.forEach((c, i) => {
      if (typeof c !== 'string' || !hex64.test(c)) add(`$.payload.chunks[${i}]`, 'must be a sha256 hex string');
    });
    const size = p['uncompressedSize'];
    const chunkSize = p['chunkSize'];
    if (typeof size === 'number' && typeof chunkSize === 'number' && chunkSize > 0) {
      const expected = Math.ceil(size / chunkSize);
      if (chunks.length !== expected) add('$.payload.chunks', `must have ${expected} entries for ${size} bytes in ${chunkSize}-byte chunks, has ${chunks.length}`);
    }
  }

  if (p['index'] !== undefined) checkIndex(p['index'], p['uncompressedSize'], add);
  if (p['indexObject'] !== undefined) checkIndexObject(p['indexObject'], p['uncompressedSize'], add);
  if (p['index'] !== undefined && p['indexObject'] !== undefined) add('$.payload', 'carries both index and indexObject: a manifest names its chunk index once');

  if (problems.length > 0) {
    throw new KubeosError('E_BUNDLE_INVALID', `bundle manifest is invalid: ${problems.map((p) => `${p.path} ${p.message}`).join('; ')}`, {
      details: { problems },
    });
  }
  return value as BundleManifest;
}

/** The chunk index of format 2: a known rule, and chunks that cover exactly the image. */
function checkIndex(value: unknown, size: unknown, add: (path: string, message: string) => void): void {
  const path = '$.payload.index';
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    add(path, 'must be an object');
    return;
  }
  const index = value as Record<string, unknown>;
  const max = checkRule(index['rule'], `${path}.rule`, add) ?? Number.MAX_SAFE_INTEGER;
  const chunks = index['chunks'];
  if (!Array.isArray(chunks)) {
    add(`${path}.chunks`, 'must be an array of [length, sha256] pairs');
    return;
  }
  let total = 0;
  let bad = 0;
  chunks.forEach((c: unknown, i) => {
    const ok = Array.isArray(c) && c.length === 2 && Number.isSafeInteger(c[0]) && (c[0] as number) > 0 && (c[0] as number) <= max && typeof c[1] === 'string' && hex64.test(c[1]);
    if (!ok) {
      // a broken index lists its first few problems, not a million of them
      if (bad++ < 5) add(`${path}.chunks[${i}]`, `must be [length 1..${max}, sha256 hex]`);
      return;
    }
    total += c[0] as number;
  });
  if (bad === 0 && typeof size === 'number' && total !== size) add(`${path}.chunks`, `lengths add up to ${total} bytes, the image is ${size}`);
}

/** A known content-defined rule; its max when valid. */
function checkRule(value: unknown, path: string, add: (path: string, message: string) => void): number | undefined {
  const rule = value as Record<string, unknown> | undefined;
  if (rule === null || typeof rule !== 'object' || rule['kind'] !== 'cdc') {
    add(path, 'must be {"kind":"cdc","min":N,"avg":N,"max":N}');
    return undefined;
  }
  try {
    checkChunkRule({ kind: 'cdc', min: rule['min'] as number, avg: rule['avg'] as number, max: rule['max'] as number });
    return rule['max'] as number;
  } catch (error) {
    add(path, (error as Error).message);
    return undefined;
  }
}

/**
 * The index object of format 2: a known rule, a count of chunks that can cover the image under
 * that rule, and the size an index of that many chunks encodes to. Its bytes are checked against
 * size and sha256 when fetched (chunk-index-object.ts).
 */
function checkIndexObject(value: unknown, size: unknown, add: (path: string, message: string) => void): void {
  const path = '$.payload.indexObject';
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    add(path, 'must be an object');
    return;
  }
  const o = value as Record<string, unknown>;
  const max = checkRule(o['rule'], `${path}.rule`, add);
  const count = o['chunkCount'];
  const countOk = typeof count === 'number' && Number.isSafeInteger(count) && count >= 0;
  if (!countOk) add(`${path}.chunkCount`, 'must be an integer >= 0');
  else if (typeof size === 'number' && Number.isSafeInteger(size)) {
    // every chunk holds 1..max bytes
    if (count > size || (max !== undefined && count * max < size) || (size > 0 && count === 0)) {
      add(`${path}.chunkCount`, `${count} chunks cannot hold the ${size}-byte image${max === undefined ? '' : ` in chunks of 1..${max} bytes`}`);
    }
  }
  const bytes = o['size'];
  if (typeof bytes !== 'number' || !Number.isSafeInteger(bytes) || bytes < 0) add(`${path}.size`, 'must be an integer >= 0');
  else if (countOk && bytes !== indexObjectBytes(count)) add(`${path}.size`, `must be ${indexObjectBytes(count)} for ${count} chunks, is ${bytes}`);
  const sha256 = o['sha256'];
  if (typeof sha256 !== 'string' || !hex64.test(sha256)) add(`${path}.sha256`, 'must be a sha256 hex string');
}

/** Refuses a bundle built for other hosts. */
export function checkCompatible(manifest: BundleManifest, compatible: string): void {
  if (manifest.compatible !== compatible) {
    throw new KubeosError('E_INCOMPATIBLE', `bundle is for "${manifest.compatible}", this host is "${compatible}"`, {
      details: { expected: compatible, actual: manifest.compatible },
    });
  }
}
