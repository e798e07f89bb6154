/** `commit`, `rollback` and `status`: small applications of the pure plans in plan-boot-env.ts. */
import { otherSlot, type Slot } from '../core/boot-env.js';
import { runCommand } from '../core/exec.js';
import type { AgentConfig } from './agent-config.js';
import { readState, writeState, type StoredState } from './agent-state.js';
import { readBootEnv, writeBootEnv } from './boot-env-store.js';
import { describeStatus, planCommit, planRollback, type HostStatus } from './plan-boot-env.js';
import { readBooted, type Booted } from './read-booted.js';
import { takeLock } from './take-lock.js';

/** The booted slot's record, known even on a factory image the agent never installed. */
function withBooted(state: StoredState, booted: Booted, committed: boolean): StoredState {
  const record = state.slots[booted.slot];
  if (record === undefined || record.version !== booted.version) {
    state.slots[booted.slot] = { version: booted.version, sha256: record?.sha256 ?? '', size: record?.size ?? 0, committed };
  }
  return state;
}

export async function status(config: AgentConfig): Promise<HostStatus & { version: string; compatible: string }> {
  const booted = await readBooted(config.runDir, config.osRelease);
  const { env } = await readBootEnv(config.bootEnv);
  const state = withBooted(await readState(config.stateDir), booted, env.good === booted.slot);
  return { version: booted.version, compatible: config.compatible, ...describeStatus(env, booted.slot, booted.kind, state) };
}

export type CommitResult = { kind: 'committed' | 'already-committed'; slot: Slot; version: string };

export async function commit(config: AgentConfig): Promise<CommitResult> {
  const lock = await takeLock(config.runDir, 'commit');
  try {
    const booted = await readBooted(config.runDir, config.osRelease);
    const { env, vars } = await readBootEnv(config.bootEnv);
    const plan = planCommit(env, booted.slot, booted.kind);
    const state = withBooted(await readState(config.stateDir), booted, true);
    if (plan.kind === 'already-committed') return { kind: 'already-committed', slot: booted.slot, version: booted.version };
    await writeBootEnv(config.bootEnv, plan.env, vars);
    const record = state.slots[booted.slot];
    if (record) record.committed = true;
    state.lastUpgrade = { version: booted.version, slot: booted.slot, result: 'committed', at: new Date().toISOString() };
    await writeState(config.stateDir, state);
    return { kind: 'committed', slot: booted.slot, version: booted.version };
  } finally {
    await lock.release().catch(() => {});
  }
}

export async function rollback(config: AgentConfig, options: { reboot?: boolean } = {}): Promise<{ slot: Slot; version: string | undefined; rebooting: boolean }> {
  const lock = await takeLock(config.runDir, 'rollback');
  try {
    const booted = await readBooted(config.runDir, config.osRelease);
    const { env, vars } = await readBootEnv(config.bootEnv);
    const state = withBooted(await readState(config.stateDir), booted, env.good === booted.slot);
    const next = planRollback(env, booted.slot, state);
    await writeBootEnv(config.bootEnv, next, vars);
    const rebooting = options.reboot !== false;
    if (rebooting) await runCommand(config.reboot, { timeoutMs: 60_000 });
    return { slot: otherSlot(booted.slot), version: state.slots[otherSlot(booted.slot)]?.version, rebooting };
  } finally {
    await lock.release().catch(() => {});
  }
}
