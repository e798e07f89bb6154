/**
 * Pure decisions over the boot environment: what an upgrade, a commit or a rollback changes, and
 * how a host's state reads. The agent applies the result; nothing here touches a disk.
 */
import { otherSlot, type BootEnv, type Slot } from '../core/boot-env.js';
import { KubeosError } from '../core/errors.js';

export type BootKind = 'good' | 'trying' | 'fallback';

export interface SlotRecord {
  version: string;
  sha256: string;
  size: number;
  /** True once a boot of this slot was committed (or it was the factory image). */
  committed: boolean;
}

export interface AgentState {
  slots: Partial<Record<Slot, SlotRecord>>;
  lastUpgrade?: { version: string; slot: Slot; result: 'installed' | 'committed' | 'failed' | 'fell-back'; at: string; error?: string };
  /**
   * An install into this slot began (the slot was released) and has not ended: the slot may hold
   * verified chunks of it, which the next delta install reads instead of fetching again.
   */
  interrupted?: { slot: Slot; version: string; size: number };
}

/** After the standby slot verified: try it for `tries` boots, keeping the booted slot as the good one. */
export function planTryStandby(env: BootEnv, booted: Slot, tries: number): BootEnv {
  if (env.trying !== undefined && env.trying === booted) {
    throw new KubeosError('E_SLOT', `slot ${booted} is being tried and not committed yet: commit it (or reboot) before the next upgrade`, {
      hint: 'run kubeos agent commit once the system is healthy',
    });
  }
  return { good: booted, trying: otherSlot(booted), triesLeft: tries, failed: undefined };
}

/** The standby slot is about to be overwritten: it must not be named by the environment any more. */
export function planForgetStandby(env: BootEnv, booted: Slot): BootEnv {
  const standby = otherSlot(booted);
  return {
    good: env.good === standby ? booted : env.good,
    trying: env.trying === standby ? undefined : env.trying,
    triesLeft: env.trying === standby ? 0 : env.triesLeft,
    failed: env.failed,
  };
}

export type CommitPlan = { kind: 'commit'; env: BootEnv } | { kind: 'already-committed' };

export function planCommit(env: BootEnv, booted: Slot, bootKind: BootKind): CommitPlan {
  if (env.trying === booted || (bootKind === 'trying' && env.good !== booted)) {
    return { kind: 'commit', env: { good: booted, trying: undefined, triesLeft: 0, failed: undefined } };
  }
  if (env.good === booted) return { kind: 'already-committed' };
  throw new KubeosError('E_SLOT', `the booted slot ${booted} is neither the good slot (${env.good}) nor being tried`, {
    hint: 'the boot loader fell back or the environment was changed; run kubeos agent status',
  });
}

export function planRollback(env: BootEnv, booted: Slot, state: AgentState): BootEnv {
  const target = otherSlot(booted);
  const record = state.slots[target];
  if (!record?.committed) {
    throw new KubeosError('E_SLOT', `slot ${target} holds no committed image to roll back to`, {
      hint: 'kubeos agent status shows what each slot holds',
      details: { slot: target, record },
    });
  }
  return { good: target, trying: undefined, triesLeft: 0, failed: undefined };
}

export type SlotState = 'good' | 'trying' | 'empty' | 'failed' | 'standby';

export interface HostStatus {
  booted: Slot;
  bootKind: BootKind;
  fellBack: boolean;
  slots: Record<Slot, { state: SlotState; version: string | undefined; triesLeft?: number }>;
  lastUpgrade: AgentState['lastUpgrade'];
}

export function describeStatus(env: BootEnv, booted: Slot, bootKind: BootKind, state: AgentState): HostStatus {
  const slotState = (slot: Slot): HostStatus['slots'][Slot] => {
    const version = state.slots[slot]?.version;
    if (env.trying === slot) return { state: 'trying', version, triesLeft: env.triesLeft };
    if (env.failed === slot) return { state: 'failed', version };
    if (env.good === slot) return { state: 'good', version };
    return { state: version === undefined ? 'empty' : 'standby', version };
  };
  return {
    booted,
    bootKind,
    fellBack: bootKind === 'fallback' || (env.failed !== undefined && env.failed !== booted && state.lastUpgrade?.slot === env.failed && state.lastUpgrade.result !== 'committed'),
    slots: { A: slotState('A'), B: slotState('B') },
    lastUpgrade: state.lastUpgrade,
  };
}
