/**
 * Where a delta's bytes and seconds go, measured on the files of one installPair run: the bundle
 * header the agent needs and what it read past it, the signed index as JSON against casync's
 * binary items, chunks the plan fetches twice, the share of the image to fetch against the
 * agent's 75% rule, the fetched chunks at zstd -19 instead of the store's level, the cost of one
 * zstd process per chunk, and indexing the seed. Read only: it changes neither agent nor store.
 */
import { createReadStream } from 'node:fs';
import { mkdir, open, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { chunkZstdLevel as zstdLevel } from '../../builder/bundle/write-chunk-files.js';
import { maxDeltaShare, planDelta, refuseDelta } from '../../runtime/agent/plan-delta.js';
import { indexStream } from '../../runtime/core/bundle/chunk-index.js';
import { payloadMember } from '../../runtime/core/bundle/manifest.js';
import { chunkPath } from '../../runtime/core/channel/layout.js';
import { run } from '../../runtime/core/exec.js';
import type { PairResult } from './install-pair.js';
import { timeIt } from './measure.js';

export interface DeltaCauses {
  /** Bytes of the bundle up to its payload's data (tar headers, manifest, signature). */
  headerBytes: number;
  /** What the agent read of the bundle past those. */
  readAheadBytes: number;
  manifestBytes: number;
  /**
   * The index as JSON (as the inline form signs it), as 40-byte binary items (casync's .caibx),
   * the manifest at zstd -19, and the index object the host fetches (its zstd frame in the store;
   * 0 for a bundle with the inline index).
   */
  index: { chunks: number; jsonBytes: number; binaryBytes: number; manifestZstd19: number; objectBytes: number };
  plan: { bytes: number; fetchBytes: number; fetchChunks: number; share: number; refused: string | undefined };
  /** Chunks the plan fetches again because the image holds them more than once. */
  repeated: { chunks: number; bytes: number; compressed: number };
  /** The distinct chunks to fetch: compressed in the store, and at zstd -19 one by one. */
  store: { chunks: number; compressed: number; zstd19: number; zstd19Seconds: number };
  seedIndexSeconds: number;
}

/** Where the payload's data starts in a bundle (a ustar archive: 512-byte headers, sizes in octal). */
async function payloadOffset(bundle: string): Promise<{ offset: number; manifestBytes: number }> {
  const handle = await open(bundle, 'r');
  try {
    let at = 0;
    let manifestBytes = 0;
    const header = Buffer.alloc(512);
    for (;;) {
      await handle.read(header, 0, 512, at);
      const name = header.toString('utf8', 0, 100).replace(/\0.*$/s, '');
      const size = Number.parseInt(header.toString('utf8', 124, 136).replace(/\0.*$/s, '').trim(), 8);
      if (name === '' || !Number.isFinite(size)) throw new Error(`${bundle}: no ${payloadMember} member`);
      if (name === payloadMember) return { offset: at + 512, manifestBytes };
      if (name === 'manifest.json') manifestBytes = size;
      at += 512 + Math.ceil(size / 512) * 512;
    }
  } finally {
    await handle.close();
  }
}

async function zstdFiles(args: string[], files: string[]): Promise<void> {
  for (let i = 0; i < files.length; i += 256) await run('zstd', ['-q', '-f', ...args, ...files.slice(i, i + 256)], { timeoutMs: 30 * 60_000 });
}

async function sizes(files: string[]): Promise<number> {
  let total = 0;
  for (const file of files) total += (await stat(file)).size;
  return total;
}

export async function measureCauses(dir: string, oldImage: string, pair: PairResult): Promise<DeltaCauses> {
  const { bundle, www } = pair;
  const index = bundle.index!;
  const object = bundle.manifest.payload.indexObject;
  const objectBytes = object === undefined ? 0 : (await stat(join(www, chunkPath(object.sha256)))).size;
  const { offset: headerBytes, manifestBytes } = await payloadOffset(bundle.path);
  const delta = pair.ways.delta.transfer;
  const readAheadBytes = delta?.mode === 'delta' ? delta.bundleBytes - headerBytes : Number.NaN;

  const scratch = join(dir, 'causes');
  await mkdir(scratch, { recursive: true });
  const manifestJson = join(scratch, 'index.json');
  await writeFile(manifestJson, JSON.stringify(bundle.manifest));
  await run('zstd', ['-q', '-f', '-19', manifestJson], { timeoutMs: 60_000 });
  const manifestZstd19 = (await stat(`${manifestJson}.zst`)).size;
  const jsonBytes = Buffer.byteLength(JSON.stringify(index.chunks));

  const seeded = await timeIt(() => indexStream(createReadStream(oldImage, { highWaterMark: 1 << 20 }), index.rule));
  const plan = planDelta(seeded.value, index);
  const fetched = new Set<string>();
  const repeated = { chunks: 0, bytes: 0, compressed: 0 };
  for (const step of plan.steps) {
    if (step.from !== 'store') continue;
    if (fetched.has(step.sha256)) {
      repeated.chunks++;
      repeated.bytes += step.length;
      repeated.compressed += (await stat(join(www, chunkPath(step.sha256)))).size;
    }
    fetched.add(step.sha256);
  }
  const files = [...fetched].sort().map((sha256) => join(www, chunkPath(sha256)));

  // the distinct chunks to fetch, decompressed and compressed again one by one at -19
  const raw = join(scratch, 'raw');
  const high = join(scratch, 'zstd19');
  await mkdir(raw);
  await mkdir(high);
  await zstdFiles(['-d', `--output-dir-flat=${raw}`], files);
  const rawFiles = [...fetched].sort().map((sha256) => join(raw, sha256));
  const recompressed = await timeIt(() => zstdFiles(['-19', `--output-dir-flat=${high}`], rawFiles));
  const zstd19 = await sizes(rawFiles.map((f) => join(high, `${f.slice(raw.length + 1)}.zst`)));

  await rm(scratch, { recursive: true, force: true });

  return {
    headerBytes,
    readAheadBytes,
    manifestBytes,
    index: { chunks: index.chunks.length, jsonBytes, binaryBytes: index.chunks.length * 40, manifestZstd19, objectBytes },
    plan: { bytes: plan.bytes, fetchBytes: plan.fetchBytes, fetchChunks: plan.fetchChunks, share: plan.fetchBytes / plan.bytes, refused: refuseDelta(plan) },
    repeated,
    store: { chunks: files.length, compressed: await sizes(files), zstd19, zstd19Seconds: recompressed.seconds },
    seedIndexSeconds: seeded.seconds,
  };
}

export { maxDeltaShare, zstdLevel };
