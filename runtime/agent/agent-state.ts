/** What the agent remembers on persist: each slot's image, the last upgrade, the highest channel serial seen. */
import { join } from 'node:path';
import { readJsonFile, writeFileAtomic } from './atomic-file.js';
import type { AgentState } from './plan-boot-env.js';

export interface StoredState extends AgentState {
  /** Highest verified serial per channel name: a lower one later is a replay (E_CHANNEL_ROLLBACK). */
  channelSerials: Record<string, number>;
}

/**
 * No file is a fresh host. A file that does not parse is reported, never read as empty: that would
 * forget the channel serials seen, and with them the protection against a replayed old index.
 * (Writes are atomic, so only damage from outside makes one.)
 */
export async function readState(stateDir: string): Promise<StoredState> {
  const parsed = await readJsonFile<Partial<StoredState>>(join(stateDir, 'state.json'), {}, 'the agent state', 'the agent then starts again from what the slots hold, and accepts any channel serial once');
  return { slots: parsed.slots ?? {}, lastUpgrade: parsed.lastUpgrade, interrupted: parsed.interrupted, channelSerials: parsed.channelSerials ?? {} };
}

/** Write-then-rename on persist (ext4), synced, so a crash leaves the old or the new state whole. */
export async function writeState(stateDir: string, state: StoredState): Promise<void> {
  await writeFileAtomic(join(stateDir, 'state.json'), `${JSON.stringify(state, null, 2)}\n`, 0o644);
}
