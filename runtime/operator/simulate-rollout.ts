/**
 * A discrete-event simulation of a rollout: the real planner against simulated nodes whose agents
 * take simulated time to drain, download, reboot and commit. Used by the property tests and by
 * `npm run bench` (1,000 nodes). Time is simulated milliseconds; nothing here sleeps or reads a clock.
 */
import type { NodeView, PodView } from '../fleet/node-protocol.js';
import type { Rollout, OSUpgradeSpec, OSUpgradeStatus } from '../fleet/osupgrade.js';
import { planRollout, type RolloutAction, type RolloutPlan } from './plan-rollout.js';

export interface SimNodeBehavior {
  /** How long an evicted pod takes to terminate. */
  drainSeconds: number;
  /** Downloading and installing. */
  installSeconds: number;
  /** NotReady while rebooting into the new slot. */
  rebootSeconds: number;
  /** From Ready on the new slot to committed. */
  commitSeconds: number;
  outcome: 'committed' | 'failed' | 'fell-back' | 'never-returns';
  /** Evictions of this node's pods are refused (HTTP 429, a PodDisruptionBudget) until this simulated time (ms). */
  evictionBlockedUntil?: number;
  pods?: PodView[];
}

export interface SimNode {
  name: string;
  labels: Record<string, string>;
  currentVersion: string;
  ready?: boolean;
  unschedulable?: boolean;
  behavior: SimNodeBehavior;
}

export interface SimIntervention {
  /** Set spec.paused (a person pausing or resuming the rollout). */
  paused?: boolean;
}

export interface SimStep {
  now: number;
  /** The nodes the planner saw (do not mutate). */
  nodes: readonly NodeView[];
  rollout: Rollout;
  plan: RolloutPlan;
}

export interface SimOptions {
  nodes: SimNode[];
  name: string;
  spec: OSUpgradeSpec;
  startTime: number;
  /** Delay between a change in the cluster and the reconcile it triggers (watch latency). */
  reconcileDelayMs: number;
  /** Periodic resync on top of change- and timer-driven reconciles; 0 for none. */
  resyncMs?: number;
  /** Give up after this much simulated time. */
  maxDurationMs: number;
  onStep?: (step: SimStep) => SimIntervention | void;
}

export interface SimResult {
  /** From the start to the reconcile that saw the rollout Complete. */
  makespanMs: number;
  complete: boolean;
  reconciles: number;
  status: OSUpgradeStatus | undefined;
  evictionsRefused: number;
  /** Per node: how many times it was told to upgrade. */
  upgradeStarts: Map<string, number>;
  /** The nodes at the end. */
  nodes: NodeView[];
  /** The rollout at the end (spec.paused, the operator's marks). */
  rollout: Rollout;
}

type SimEvent = { at: number; seq: number; run: () => void };

/** A binary min-heap of events by (time, insertion order), so equal times run in order. */
class EventQueue {
  private heap: SimEvent[] = [];
  private seq = 0;
  get size(): number {
    return this.heap.length;
  }
  push(at: number, run: () => void): void {
    const h = this.heap;
    h.push({ at, seq: this.seq++, run });
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }
  pop(): SimEvent | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last !== undefined) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }
  private less(a: SimEvent, b: SimEvent): boolean {
    return a.at < b.at || (a.at === b.at && a.seq < b.seq);
  }
}

export function simulateRollout(options: SimOptions): SimResult {
  const queue = new EventQueue();
  const behaviors = new Map<string, SimNodeBehavior>();
  const views: NodeView[] = [];
  const byName = new Map<string, NodeView>();
  const livePods = new Map<string, PodView[]>();
  for (const n of options.nodes) {
    const view: NodeView = {
      name: n.name,
      uid: undefined,
      progress: undefined,
      labels: n.labels,
      unschedulable: n.unschedulable ?? false,
      ready: n.ready ?? true,
      readySince: options.startTime - 3_600_000,
      desiredVersion: undefined,
      currentVersion: n.currentVersion,
      agentState: 'idle',
      stateVersion: undefined,
      lastError: undefined,
      record: undefined,
    };
    views.push(view);
    byName.set(n.name, view);
    behaviors.set(n.name, n.behavior);
    livePods.set(n.name, (n.behavior.pods ?? []).map((p) => ({ ...p })));
  }
  const rollout: Rollout = {
    name: options.name,
    generation: 1,
    spec: { ...options.spec },
    pausedBy: undefined,
    rolledBack: undefined,
    failuresAcknowledged: 0,
    previousStatus: undefined,
  };
  const upgradeStarts = new Map<string, number>();
  let now = options.startTime;
  let reconciles = 0;
  let evictionsRefused = 0;
  let status: OSUpgradeStatus | undefined;
  let completeAt: number | undefined;
  let nextReconcile: number | undefined;

  const scheduleReconcile = (at: number) => {
    if (nextReconcile !== undefined && nextReconcile <= at && nextReconcile >= now) return;
    nextReconcile = at;
    queue.push(at, () => {
      if (nextReconcile !== at) return;
      nextReconcile = undefined;
      reconcile();
    });
  };
  const changed = () => scheduleReconcile(now + options.reconcileDelayMs);
  const later = (seconds: number, fn: () => void) => queue.push(now + seconds * 1000, () => {
    fn();
    changed();
  });

  const startAgent = (view: NodeView, version: string) => {
    const b = behaviors.get(view.name)!;
    const from = view.currentVersion;
    view.agentState = 'downloading';
    view.stateVersion = version;
    view.lastError = undefined;
    later(b.installSeconds / 2, () => {
      if (b.outcome === 'failed') {
        view.agentState = 'failed';
        view.lastError = 'simulated download failure';
      } else view.agentState = 'installing';
    });
    if (b.outcome === 'failed') return;
    later(b.installSeconds, () => {
      view.agentState = 'rebooting';
      view.ready = false;
      view.readySince = undefined;
    });
    if (b.outcome === 'never-returns') return;
    later(b.installSeconds + b.rebootSeconds, () => {
      view.ready = true;
      view.readySince = now;
      view.agentState = b.outcome === 'fell-back' ? 'fell-back' : 'trying';
      view.currentVersion = b.outcome === 'fell-back' ? from : version;
      if (b.outcome === 'fell-back') view.lastError = 'simulated boot failure, fell back';
    });
    if (b.outcome === 'fell-back') return;
    later(b.installSeconds + b.rebootSeconds + b.commitSeconds, () => {
      view.agentState = 'committed';
    });
  };

  const apply = (action: RolloutAction) => {
    if (action.type === 'roll-back') {
      rollout.spec = { ...rollout.spec, version: action.to, allowDowngrade: true };
      rollout.rolledBack = { from: action.from, to: action.to };
      return;
    }
    if (action.type === 'pause-rollout') {
      rollout.spec = { ...rollout.spec, paused: true };
      rollout.pausedBy = 'failure-budget';
      return;
    }
    if (action.type === 'acknowledge-failures') {
      rollout.pausedBy = undefined;
      rollout.failuresAcknowledged = action.count;
      return;
    }
    const view = byName.get(action.node)!;
    switch (action.type) {
      case 'cordon':
        view.unschedulable = true;
        view.record = action.record;
        view.pods = livePods.get(view.name);
        break;
      case 'evict': {
        const b = behaviors.get(view.name)!;
        const pods = livePods.get(view.name)!;
        for (const ref of action.pods) {
          const pod = pods.find((p) => p.namespace === ref.namespace && p.name === ref.name);
          if (pod === undefined || pod.terminating) continue;
          if (b.evictionBlockedUntil !== undefined && now < b.evictionBlockedUntil) {
            evictionsRefused++;
            continue;
          }
          pod.terminating = true;
          later(b.drainSeconds, () => {
            const i = pods.indexOf(pod);
            if (i >= 0) pods.splice(i, 1);
          });
        }
        if (b.evictionBlockedUntil !== undefined && now < b.evictionBlockedUntil) scheduleReconcile(Math.min(b.evictionBlockedUntil, now + 10_000));
        break;
      }
      case 'set-desired-version':
        view.desiredVersion = action.version;
        view.record = action.record;
        view.pods = undefined;
        upgradeStarts.set(view.name, (upgradeStarts.get(view.name) ?? 0) + 1);
        startAgent(view, action.version);
        break;
      case 'uncordon':
        view.unschedulable = false;
        view.record = action.record;
        break;
      case 'mark-done':
        view.record = action.record;
        break;
      case 'mark-failed':
        view.record = action.record;
        view.desiredVersion = undefined;
        view.pods = undefined;
        if (action.uncordon) view.unschedulable = false;
        break;
    }
  };

  const reconcile = () => {
    reconciles++;
    rollout.previousStatus = status;
    const plan = planRollout(rollout, { nodes: views }, now);
    status = plan.status;
    if (plan.status.phase === 'Complete' && completeAt === undefined) completeAt = now;
    const intervention = options.onStep?.({ now, nodes: views, rollout, plan });
    for (const action of plan.actions) apply(action);
    if (plan.actions.length > 0) changed();
    if (intervention?.paused !== undefined && intervention.paused !== rollout.spec.paused) {
      rollout.spec = { ...rollout.spec, paused: intervention.paused };
      changed();
    }
    if (plan.wakeAt !== undefined && plan.wakeAt > now) scheduleReconcile(plan.wakeAt);
  };

  const end = options.startTime + options.maxDurationMs;
  if (options.resyncMs) {
    const resync = options.resyncMs;
    const tick = () => {
      reconcile();
      if (completeAt === undefined && now + resync <= end) queue.push(now + resync, tick);
    };
    queue.push(now + resync, tick);
  }
  reconcile();
  while (completeAt === undefined && queue.size > 0) {
    const event = queue.pop()!;
    if (event.at > end) break;
    now = event.at;
    event.run();
  }

  return {
    makespanMs: (completeAt ?? now) - options.startTime,
    complete: completeAt !== undefined,
    reconciles,
    status,
    evictionsRefused,
    upgradeStarts,
    nodes: views,
    rollout,
  };
}
