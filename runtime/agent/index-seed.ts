/**
 * The seed of a delta install: the chunk index of the booted slot, cut with the bundle's rule, so
 * chunks it shares with the new image are copied from it instead of downloaded. Read only; a read
 * error is an E_DELTA (the install takes the full bundle).
 */
import { createReadStream } from 'node:fs';
import { indexStream, type Chunk } from '../core/bundle/chunk-index.js';
import type { ChunkIndexInfo } from '../core/bundle/manifest.js';
import { KubeosError } from '../core/errors.js';
import type { SlotTarget } from './open-slot.js';

/** `bytes`: how much of the slot holds its image (the whole slot when unknown). */
export async function indexSeed(seed: SlotTarget, rule: ChunkIndexInfo['rule'], bytes: number | undefined, signal?: AbortSignal): Promise<Chunk[]> {
  const length = bytes !== undefined && bytes > 0 && bytes <= seed.size ? bytes : seed.size;
  if (length === 0) return [];
  try {
    return await indexStream(createReadStream(seed.path, { start: seed.offset, end: seed.offset + length - 1, highWaterMark: 1 << 20, signal }), rule);
  } catch (cause) {
    signal?.throwIfAborted();
    throw new KubeosError('E_DELTA', `cannot read slot ${seed.slot} (${seed.path}) to index it: ${(cause as Error).message}`, { cause, details: { path: seed.path } });
  }
}
