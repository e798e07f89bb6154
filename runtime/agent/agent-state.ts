/** What the agent remembers on persist: each slot's image, the last upgrade, the highest channel serial seen. */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import type { AgentState } from './plan-boot-env.js';

export interface StoredState extends AgentState {
  /** Highest verified serial per channel name: a lower one later is a replay (E_CHANNEL_ROLLBACK). */
  channelSerials: Record<string, number>;
}

export async function readState(stateDir: string): Promise<StoredState> {
  try {
    const parsed = JSON.parse(await readFile(join(stateDir, 'state.json'), 'utf8')) as Partial<StoredState>;
    return { slots: parsed.slots ?? {}, lastUpgrade: parsed.lastUpgrade, channelSerials: parsed.channelSerials ?? {} };
  } catch {
    return { slots: {}, channelSerials: {} };
  }
}

/** Write-then-rename on persist (ext4), synced, so a crash leaves the old or the new state whole. */
export async function writeState(stateDir: string, state: StoredState): Promise<void> {
  await mkdir(stateDir, { recursive: true });
  const file = join(stateDir, 'state.json');
  const tmp = `${file}.tmp-${process.pid}`;
  const handle = await open(tmp, 'w');
  try {
    await handle.writeFile(`${JSON.stringify(state, null, 2)}\n`);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmp, file);
  const dir = await open(stateDir, 'r');
  await dir.sync().finally(() => dir.close());
}
