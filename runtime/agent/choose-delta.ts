/**
 * Decides, before the standby slot is touched, whether an install goes by delta: the bundle must
 * carry a signed chunk index (format 2), sit on an image server beside its chunk store, and the
 * booted slot (with what an interrupted install left in the standby, when one did) must hold
 * enough of its chunks. Anything else, a seed that cannot be read included, is a full install,
 * with the reason.
 */
import type { Chunk } from '../core/bundle/chunk-index.js';
import type { BundleManifest } from '../core/bundle/manifest.js';
import { chunkStoreOf } from '../core/channel/layout.js';
import { isKubeosError } from '../core/errors.js';
import { indexSeed } from './index-seed.js';
import type { SlotTarget } from './open-slot.js';
import { planDelta, refuseDelta, type DeltaPlan } from './plan-delta.js';

export type DeltaChoice = { plan: DeltaPlan; store: string; /** The booted slot's index came from the state dir, not from reading the slot. */ savedIndex: boolean } | { reason: string };

/** A slot to index, and how much of it holds an image (the whole slot when unknown). */
export interface SeedSlotInput {
  target: SlotTarget;
  bytes: number | undefined;
  /** The slot's index as saved when its image was verified (slot-index-store.ts): the slot is then not read. */
  saved?: Chunk[] | undefined;
}

export async function chooseDelta(manifest: BundleManifest, source: string, booted: SeedSlotInput, standby: SeedSlotInput | undefined, signal?: AbortSignal): Promise<DeltaChoice> {
  const index = manifest.payload.index;
  if (index === undefined) return { reason: 'the bundle has no chunk index (format 1)' };
  const store = chunkStoreOf(source);
  if (store === undefined) return { reason: 'the bundle is not under bundles/ on an image server, so there is no chunk store beside it' };
  const held = [];
  for (const seed of [booted, standby]) {
    if (seed === undefined) continue;
    try {
      held.push(seed.saved ?? (await indexSeed(seed.target, index.rule, seed.bytes, signal)));
    } catch (error) {
      signal?.throwIfAborted();
      return { reason: `slot ${seed.target.slot} could not be indexed (${isKubeosError(error) ? error.code : 'E_DELTA'}: ${(error as Error).message})` };
    }
  }
  const plan = planDelta(held[0]!, index, held[1]);
  const refused = refuseDelta(plan);
  return refused === undefined ? { plan, store, savedIndex: booted.saved !== undefined } : { reason: `a delta is not worth it: ${refused}` };
}
