/**
 * The delta install as data: for each chunk of the signed index, in image order, where its bytes
 * come from (a range of the seed, the booted slot, holding a chunk with that sha256; or the chunk
 * store) and what it costs. Pure; `kubeos agent upgrade --json` reports its totals.
 */
import type { Chunk } from '../core/bundle/chunk-index.js';
import type { ChunkIndexInfo } from '../core/bundle/manifest.js';

export type DeltaStep =
  | { from: 'seed'; offset: number; length: number; sha256: string; seedOffset: number }
  | { from: 'store'; offset: number; length: number; sha256: string };

export interface DeltaPlan {
  steps: DeltaStep[];
  bytes: number;
  reusedBytes: number;
  reusedChunks: number;
  /** Uncompressed bytes and chunks to fetch (a chunk repeated in the image is fetched each time). */
  fetchBytes: number;
  fetchChunks: number;
}

/** Above this share of the image to fetch, a delta saves too little over the full bundle to be worth its requests. */
export const maxDeltaShare = 0.75;

export function planDelta(seed: Iterable<Chunk>, index: ChunkIndexInfo): DeltaPlan {
  const held = new Map<string, number>();
  for (const chunk of seed) if (!held.has(chunk.sha256)) held.set(chunk.sha256, chunk.offset);
  const steps: DeltaStep[] = [];
  let offset = 0;
  let reusedBytes = 0;
  let reusedChunks = 0;
  for (const [length, sha256] of index.chunks) {
    const seedOffset = held.get(sha256);
    if (seedOffset === undefined) steps.push({ from: 'store', offset, length, sha256 });
    else {
      steps.push({ from: 'seed', offset, length, sha256, seedOffset });
      reusedBytes += length;
      reusedChunks++;
    }
    offset += length;
  }
  return { steps, bytes: offset, reusedBytes, reusedChunks, fetchBytes: offset - reusedBytes, fetchChunks: steps.length - reusedChunks };
}

/** Why a delta is not worth trying, or undefined when it is. */
export function refuseDelta(plan: DeltaPlan): string | undefined {
  if (plan.reusedBytes === 0) return 'the booted slot holds none of its chunks';
  if (plan.fetchBytes > plan.bytes * maxDeltaShare) return `it would fetch ${plan.fetchBytes} of ${plan.bytes} bytes, over ${maxDeltaShare * 100}%`;
  return undefined;
}
