/**
 * The delta install as data: for each chunk of the signed index, in image order, where its bytes
 * come from and what it costs. Sources, in order of preference:
 *   - the booted slot (the seed), holding a chunk with that sha256 anywhere;
 *   - the standby slot, when an install into it was interrupted: a chunk it holds at or after the
 *     chunk's own offset (the writer, always behind the reader, has not overwritten that yet);
 *   - an earlier chunk of the same image fetched once already (kept in memory while it recurs);
 *   - the chunk store.
 * Every byte from a slot is hashed again when read, so a plan from a stale index costs a fetch,
 * never a wrong byte. Pure; `kubeos agent upgrade --json` reports its totals.
 */
import type { Chunk } from '../core/bundle/chunk-index.js';
import type { ChunkIndexInfo } from '../core/bundle/manifest.js';

export type SeedSlot = 'booted' | 'standby';

export type DeltaStep =
  | { from: 'seed'; seed: SeedSlot; offset: number; length: number; sha256: string; seedOffset: number }
  | { from: 'store'; offset: number; length: number; sha256: string; /** Later steps fetch nothing for the same chunk: keep its bytes. */ recurs: boolean }
  | { from: 'repeat'; offset: number; length: number; sha256: string; /** The step that fetched it. */ step: number };

export interface DeltaPlan {
  steps: DeltaStep[];
  bytes: number;
  reusedBytes: number;
  reusedChunks: number;
  /** Of the reused, what the standby slot held from an interrupted install. */
  resumedBytes: number;
  resumedChunks: number;
  /** Uncompressed bytes and chunks to fetch: each distinct missing chunk once. */
  fetchBytes: number;
  fetchChunks: number;
}

/** Above this share of the image to fetch, a delta saves too little over the full bundle to be worth its requests. */
export const maxDeltaShare = 0.9;

/** Fetched chunks that recur later are kept in memory up to this many bytes; past it they are fetched again. */
export const maxRepeatBytes = 32 << 20;

export function planDelta(booted: Iterable<Chunk>, index: ChunkIndexInfo, standby: Iterable<Chunk> = []): DeltaPlan {
  const held = new Map<string, number>();
  for (const chunk of booted) if (!held.has(chunk.sha256)) held.set(chunk.sha256, chunk.offset);
  // every offset of each chunk the standby holds, ascending (it is indexed in order)
  const left = new Map<string, number[]>();
  for (const chunk of standby) {
    const offsets = left.get(chunk.sha256);
    if (offsets === undefined) left.set(chunk.sha256, [chunk.offset]);
    else offsets.push(chunk.offset);
  }
  const steps: DeltaStep[] = [];
  const fetchedAt = new Map<string, number>();
  let kept = 0;
  let offset = 0;
  let reusedBytes = 0;
  let reusedChunks = 0;
  let resumedBytes = 0;
  let resumedChunks = 0;
  for (const [length, sha256] of index.chunks) {
    const seedOffset = held.get(sha256);
    const standbyOffset = seedOffset === undefined ? left.get(sha256)?.find((at) => at >= offset) : undefined;
    const first = fetchedAt.get(sha256);
    if (seedOffset !== undefined || standbyOffset !== undefined) {
      const seed: SeedSlot = seedOffset !== undefined ? 'booted' : 'standby';
      steps.push({ from: 'seed', seed, offset, length, sha256, seedOffset: seedOffset ?? standbyOffset! });
      reusedBytes += length;
      reusedChunks++;
      if (seed === 'standby') {
        resumedBytes += length;
        resumedChunks++;
      }
    } else if (first !== undefined && (steps[first] as { recurs: boolean }).recurs) {
      steps.push({ from: 'repeat', offset, length, sha256, step: first });
    } else if (first !== undefined && kept + length <= maxRepeatBytes) {
      (steps[first] as { recurs: boolean }).recurs = true;
      kept += length;
      steps.push({ from: 'repeat', offset, length, sha256, step: first });
    } else {
      if (first === undefined) fetchedAt.set(sha256, steps.length);
      steps.push({ from: 'store', offset, length, sha256, recurs: false });
    }
    offset += length;
  }
  let fetchBytes = 0;
  let fetchChunks = 0;
  for (const step of steps) {
    if (step.from !== 'store') continue;
    fetchBytes += step.length;
    fetchChunks++;
  }
  return { steps, bytes: offset, reusedBytes, reusedChunks, resumedBytes, resumedChunks, fetchBytes, fetchChunks };
}

/** Why a delta is not worth trying, or undefined when it is. */
export function refuseDelta(plan: DeltaPlan): string | undefined {
  if (plan.reusedBytes === 0) return 'the slots hold none of its chunks';
  if (plan.fetchBytes > plan.bytes * maxDeltaShare) return `it would fetch ${plan.fetchBytes} of ${plan.bytes} bytes, over ${maxDeltaShare * 100}%`;
  return undefined;
}
