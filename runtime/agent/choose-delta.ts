/**
 * Decides, before the standby slot is touched, whether an install goes by delta: the bundle must
 * carry a signed chunk index (format 2: inline, or an index object fetched from the chunk store),
 * sit on an image server beside its chunk store, and the booted slot (with what an interrupted
 * install left in the standby, when one did) must hold enough of its chunks. Anything else, an
 * index object that cannot be fetched or a seed that cannot be read included, is a full install,
 * with the reason.
 */
import type { Chunk } from '../core/bundle/chunk-index.js';
import type { BundleManifest, ChunkIndexInfo } from '../core/bundle/manifest.js';
import { chunkStoreOf } from '../core/channel/layout.js';
import { isKubeosError } from '../core/errors.js';
import { fetchIndexObject, type IndexObjectFetch } from './fetch-index-object.js';
import { indexSeed } from './index-seed.js';
import type { SlotTarget } from './open-slot.js';
import { planDelta, refuseDelta, type DeltaPlan } from './plan-delta.js';

export interface DeltaIndex {
  /** The signed chunk index, when the manifest carries it or its index object was fetched: what the slot will hold, whichever way it is installed. */
  index?: ChunkIndexInfo | undefined;
  /** The index object's fetch (also when it failed): bytes received and requests made. */
  indexFetch?: IndexObjectFetch | undefined;
}

export type DeltaChoice = DeltaIndex & ({ plan: DeltaPlan; store: string; /** The booted slot's index came from the state dir, not from reading the slot. */ savedIndex: boolean } | { reason: string });

/** A slot to index, and how much of it holds an image (the whole slot when unknown). */
export interface SeedSlotInput {
  target: SlotTarget;
  bytes: number | undefined;
  /** The slot's index as saved when its image was verified (slot-index-store.ts): the slot is then not read. */
  saved?: Chunk[] | undefined;
}

export interface ChooseDeltaOptions {
  signal?: AbortSignal | undefined;
  /** For the index object's fetch: no data for this long and the request is retried. */
  idleMs: number;
}

export async function chooseDelta(manifest: BundleManifest, source: string, booted: SeedSlotInput, standby: SeedSlotInput | undefined, options: ChooseDeltaOptions): Promise<DeltaChoice> {
  const { signal } = options;
  const { index: inline, indexObject, uncompressedSize } = manifest.payload;
  if (inline === undefined && indexObject === undefined) return { reason: 'the bundle has no chunk index (format 1)' };
  const store = chunkStoreOf(source);
  if (store === undefined) return { index: inline, reason: 'the bundle is not under bundles/ on an image server, so there is no chunk store beside it' };
  let index = inline;
  let indexFetch: IndexObjectFetch | undefined;
  if (index === undefined) {
    // fetched before any slot is read: without it there is nothing to plan
    const fetched = await fetchIndexObject(store, indexObject!, uncompressedSize, { signal, idleMs: options.idleMs });
    indexFetch = { bytes: fetched.bytes, requests: fetched.requests };
    if ('error' in fetched) {
      signal?.throwIfAborted();
      const { error } = fetched;
      return { indexFetch, reason: `the chunk index object ${store}${indexObject!.sha256}.zst could not be used (${isKubeosError(error) ? error.code : 'E_DELTA'}: ${(error as Error).message})` };
    }
    index = fetched.index;
  }
  const found = { index, indexFetch };
  const held = [];
  for (const seed of [booted, standby]) {
    if (seed === undefined) continue;
    try {
      held.push(seed.saved ?? (await indexSeed(seed.target, index.rule, seed.bytes, signal)));
    } catch (error) {
      signal?.throwIfAborted();
      return { ...found, reason: `slot ${seed.target.slot} could not be indexed (${isKubeosError(error) ? error.code : 'E_DELTA'}: ${(error as Error).message})` };
    }
  }
  const plan = planDelta(held[0]!, index, held[1]);
  const refused = refuseDelta(plan);
  return refused === undefined ? { ...found, plan, store, savedIndex: booted.saved !== undefined } : { ...found, reason: `a delta is not worth it: ${refused}` };
}
