/** What the agent remembers on persist: each slot's image, the last upgrade, the highest channel serial seen. */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { join } from 'node:path';
import { KubeosError } from '../core/errors.js';
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
  const file = join(stateDir, 'state.json');
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { slots: {}, channelSerials: {} };
    throw new KubeosError('E_STATE_CORRUPT', `cannot read the agent state ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
  }
  let parsed: Partial<StoredState>;
  try {
    parsed = JSON.parse(text) as Partial<StoredState>;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
  } catch (error) {
    throw new KubeosError('E_STATE_CORRUPT', `the agent state ${file} is damaged (${text.length} bytes, ${(error as Error).message})`, {
      cause: error,
      hint: `move it aside (mv ${file} ${file}.damaged): the agent then starts again from what the slots hold, and accepts any channel serial once`,
      details: { file, bytes: text.length },
    });
  }
  return { slots: parsed.slots ?? {}, lastUpgrade: parsed.lastUpgrade, channelSerials: parsed.channelSerials ?? {} };
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
