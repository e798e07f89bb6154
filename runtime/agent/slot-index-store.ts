/**
 * The chunk index of the image each slot holds, kept on persist once the agent verified that
 * image: the signed index of the bundle that installed it. The next delta install takes the
 * booted slot's index from here instead of reading the whole slot to cut it again (seconds per
 * GiB). Nothing here is trusted for the image's bytes: every chunk read from the slot is hashed
 * again, so an index that no longer matches the slot costs fetches, never a wrong byte. It is used
 * only for the image it was saved with (the slot's sha256 in state.json) and the same rule.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Slot } from '../core/boot-env.js';
import type { Chunk } from '../core/bundle/chunk-index.js';
import type { ChunkIndexInfo } from '../core/bundle/manifest.js';
import { readJsonFile, writeFileAtomic } from './atomic-file.js';

interface SavedIndex {
  /** uncompressedSha256 of the image the index describes. */
  image: string;
  index: ChunkIndexInfo;
}

const fileOf = (stateDir: string, slot: Slot) => join(stateDir, `slot-${slot}.index.json`);

export async function saveSlotIndex(stateDir: string, slot: Slot, image: string, index: ChunkIndexInfo): Promise<void> {
  await writeFileAtomic(fileOf(stateDir, slot), JSON.stringify({ image, index } satisfies SavedIndex));
}

/** The slot is about to be overwritten: its index no longer describes it. */
export async function forgetSlotIndex(stateDir: string, slot: Slot): Promise<void> {
  await rm(fileOf(stateDir, slot), { force: true });
}

/** The saved index of `slot` as chunks, when it was saved for `image` with `rule`; else undefined (a damaged file too: the slot is read instead). */
export async function loadSlotIndex(stateDir: string, slot: Slot, image: string, rule: ChunkIndexInfo['rule']): Promise<Chunk[] | undefined> {
  const saved = await readJsonFile<Partial<SavedIndex>>(fileOf(stateDir, slot), {}, 'the slot index', 'the agent reads the slot instead').catch(() => ({}) as Partial<SavedIndex>);
  const kept = saved.index?.rule;
  if (saved.image !== image || image === '' || kept === undefined || kept.kind !== rule.kind || kept.min !== rule.min || kept.avg !== rule.avg || kept.max !== rule.max || !Array.isArray(saved.index?.chunks)) return undefined;
  const chunks: Chunk[] = [];
  let offset = 0;
  for (const entry of saved.index!.chunks) {
    if (!Array.isArray(entry) || typeof entry[0] !== 'number' || typeof entry[1] !== 'string') return undefined;
    chunks.push({ offset, length: entry[0], sha256: entry[1] });
    offset += entry[0];
  }
  return chunks;
}
