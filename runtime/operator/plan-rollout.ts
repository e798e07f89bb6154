/**
 * The rollout planner: (rollout, cluster state, now) → (actions, status). Pure and total: it reads
 * only its arguments, never the clock or the API, so a restarted operator that reads the same
 * cluster makes the same plan. Each node action is one Node patch (see nodePatchFor), which both
 * changes the node and records the new phase on it, so progress survives a crash between actions.
 *
 * A node goes pending → draining (cordoned, pods evicted) → upgrading (desired version set) →
 * verifying (agent committed, node Ready, uncordoned) → done once Ready for the health gate; any
 * step may end in failed. Only starting a node is gated (window, pause, failure budget, capacity);
 * nodes already in flight always run to done or failed, so nothing is left cordoned.
 */
import { isWithinAnyWindow, nextWindowOpening } from './maintenance-window.js';
import {
  encodeRecord,
  upgradeKeys,
  type RolloutKeys,
  failedAgentStates,
  inFlightPhases,
  type NodePatch,
  type NodePhase,
  type NodeRecord,
  type NodeView,
  type PodView,
} from '../fleet/node-protocol.js';
import {
  matchesSelector,
  resolveMaxUnavailable,
  weekdays,
  type DrainSpec,
  type NodeResult,
  type OSUpgradeStatus,
  type PhaseCounts,
  type Rollout,
  type RolloutCondition,
  type RolloutPhase,
} from '../fleet/osupgrade.js';

export interface ClusterState {
  nodes: readonly NodeView[];
  /**
   * The node selectors of the valid OSUpgrades created after this one. A node belongs to the newest
   * OSUpgrade that selects it: an older one leaves it alone (unless it holds the node mid-upgrade,
   * and then only until that ends), so two rollouts never pull one node two ways.
   */
  newer?: readonly { name: string; nodeSelector: Readonly<Record<string, string>> }[];
}

export interface PodRef {
  namespace: string;
  name: string;
}

export type NodeAction =
  | { type: 'cordon'; node: string; record: NodeRecord }
  | { type: 'evict'; node: string; pods: PodRef[] }
  /** `starts`: the node goes from pending straight to upgrading (a rollout that does not drain). */
  | { type: 'set-desired-version'; node: string; version: string; channel: string; allowDowngrade: boolean; record: NodeRecord; drainStarted: number; starts?: boolean }
  | { type: 'uncordon'; node: string; record: NodeRecord }
  | { type: 'mark-done'; node: string; record: NodeRecord }
  | { type: 'mark-failed'; node: string; record: NodeRecord; uncordon: boolean };

export type RolloutAction =
  | NodeAction
  | { type: 'pause-rollout'; reason: 'failure-budget'; failed: number }
  /** onFailureBudget: rollback: spec.version goes back to what the upgraded nodes ran before. */
  | { type: 'roll-back'; from: string; to: string; failed: number }
  | { type: 'acknowledge-failures'; version: string; count: number };

export interface RolloutPlan {
  actions: RolloutAction[];
  status: OSUpgradeStatus;
  /** Why no node starts now, when none does and some are still pending ("outside every maintenance window; next opens Tue 22:00 UTC"). */
  waiting: string | undefined;
  /** The earliest time (ms) the plan can change without any change in the cluster (a timeout, a window). */
  wakeAt: number | undefined;
}

/** At most this many per-node results go into status; the rest are counted in nodesOmitted. */
export const maxNodeResults = 500;

/** Pods a drain must move: everything but DaemonSet, mirror and finished pods. */
export function podsToMove(pods: readonly PodView[]): PodView[] {
  return pods.filter((p) => !p.finished && !p.mirror && p.ownerKind !== 'DaemonSet');
}

/** Why a pod may not be evicted under these drain settings (kubectl drain's rules), or undefined. */
export function evictionBlocker(pod: PodView, drain: DrainSpec): string | undefined {
  if (pod.ownerKind === undefined && !drain.force) return 'not managed by a controller (set drain.force)';
  if (pod.emptyDir && !drain.deleteEmptyDirData) return 'uses emptyDir (set drain.deleteEmptyDirData)';
  return undefined;
}

/**
 * The Node patch of an action, in the annotations of its kind of rollout (`keys`). A rollout that
 * does not drain (`cordons` false) leaves the node's schedulability alone.
 */
export function nodePatchFor(action: NodeAction, keys: RolloutKeys = upgradeKeys, cordons = true): NodePatch | undefined {
  const record = (r: NodeRecord) => ({ [keys.record]: encodeRecord(r) });
  const unschedulable = (value: true | null): Pick<NodePatch, 'spec'> => (cordons ? { spec: { unschedulable: value } } : {});
  const downgrade = (value: string | null) => (keys.allowDowngrade === undefined ? {} : { [keys.allowDowngrade]: value });
  switch (action.type) {
    case 'cordon':
      return { ...unschedulable(true), metadata: { annotations: record(action.record) } };
    case 'evict':
      return undefined;
    case 'set-desired-version':
      return { metadata: { annotations: { ...record(action.record), [keys.desired]: action.version, [keys.source]: action.channel, ...downgrade(action.allowDowngrade ? 'true' : null) } } };
    case 'uncordon':
      return { ...unschedulable(null), metadata: { annotations: record(action.record) } };
    case 'mark-done':
      return { metadata: { annotations: record(action.record) } };
    case 'mark-failed':
      // Withdrawing the desired version is what stops the agent from retrying forever.
      return { ...(action.uncordon ? unschedulable(null) : {}), metadata: { annotations: { ...record(action.record), [keys.desired]: null, [keys.source]: null, ...downgrade(null) } } };
  }
}

/**
 * Nodes held by a rollout that no longer exists (its OSUpgrade or OSConfig was deleted while they
 * were in flight): each is released as failed (RolloutDeleted) with its desired version withdrawn,
 * and uncordoned when the rollout had cordoned it. `nodes` are in that kind's view.
 */
export function planOrphanReleases(nodes: readonly NodeView[], live: ReadonlySet<string>, kind: 'OSUpgrade' | 'OSConfig', now: number): NodeAction[] {
  const actions: NodeAction[] = [];
  for (const node of nodes) {
    const rec = node.record;
    if (rec === undefined || !inFlightPhases.includes(rec.phase) || live.has(rec.rollout)) continue;
    const record: NodeRecord = { ...rec, phase: 'failed', since: now, reason: 'RolloutDeleted', message: `${kind} ${rec.rollout} was deleted while this node was ${rec.phase}; released` };
    // draining and upgrading nodes are the ones a rollout holds cordoned (verifying ones are uncordoned already)
    actions.push({ type: 'mark-failed', node: node.name, record, uncordon: node.unschedulable && (rec.phase === 'draining' || rec.phase === 'upgrading') });
  }
  return actions;
}

interface NodeOutcome {
  phase: NodePhase;
  action: NodeAction | undefined;
  /** The record after the action (or the current one). */
  record: NodeRecord | undefined;
  /** Unschedulable after the action. */
  unschedulable: boolean;
  wakeAt: number | undefined;
}

/**
 * The version the nodes this rollout upgraded to `version` ran before it (from their records):
 * what `kubeos rollout undo` and onFailureBudget: rollback go back to. An error when no node was
 * upgraded, or when they came from different versions.
 */
export function previousVersion(rollout: string, version: string, nodes: readonly NodeView[]): { version: string; nodes: string[] } | { error: string } {
  const from = new Map<string, string[]>();
  for (const node of nodes) {
    const rec = node.record;
    if (rec?.rollout !== rollout || rec.version !== version || rec.from === undefined || rec.from === version || node.currentVersion !== version) continue;
    from.set(rec.from, [...(from.get(rec.from) ?? []), node.name]);
  }
  if (from.size === 0) return { error: `no node was upgraded to ${version} by OSUpgrade ${rollout}: nothing to roll back` };
  if (from.size > 1) {
    return { error: `the nodes came from different versions (${[...from].map(([v, n]) => `${v}: ${n.length}`).join(', ')}): roll back with one OSUpgrade per version` };
  }
  const [[previous, names]] = [...from] as [[string, string[]]];
  return { version: previous, nodes: names };
}

/** Every record of a node carries the version it came from, across its phases. */
function keepFrom(rec: NodeRecord): { from?: string } {
  return rec.from === undefined ? {} : { from: rec.from };
}

function failed(node: NodeView, rec: NodeRecord, now: number, reason: string, message: string, uncordon: boolean): NodeOutcome {
  const record: NodeRecord = { rollout: rec.rollout, version: rec.version, phase: 'failed', since: now, reason, message, ...keepFrom(rec) };
  return {
    phase: 'failed',
    action: { type: 'mark-failed', node: node.name, record, uncordon },
    record,
    unschedulable: uncordon ? false : node.unschedulable,
    wakeAt: undefined,
  };
}

function stay(node: NodeView, rec: NodeRecord, wakeAt: number | undefined, action?: NodeAction): NodeOutcome {
  return { phase: rec.phase, action, record: rec, unschedulable: node.unschedulable, wakeAt };
}

/** Moves one node the operator holds by at most one step. */
function advanceInFlight(rollout: Rollout, node: NodeView, rec: NodeRecord, now: number): NodeOutcome {
  const { spec } = rollout;
  const reported = node.stateVersion === rec.version ? node.agentState : undefined;

  if (rec.phase === 'draining') {
    const deadline = rec.since + spec.drain.timeoutSeconds * 1000;
    if (node.pods === undefined) return stay(node, rec, deadline);
    const remaining = podsToMove(node.pods);
    if (remaining.length === 0 && node.currentVersion === spec.version) {
      // the target moved to what the node runs (a rollback while it drained): nothing to install
      const record: NodeRecord = { rollout: rec.rollout, version: spec.version, phase: 'verifying', since: now, ...keepFrom(rec) };
      return { phase: 'verifying', action: { type: 'uncordon', node: node.name, record }, record, unschedulable: false, wakeAt: now + spec.healthGate.readySeconds * 1000 };
    }
    if (remaining.length === 0) {
      // A draining record for an older target moves on to the current one.
      const record: NodeRecord = { rollout: rec.rollout, version: spec.version, phase: 'upgrading', since: now, ...keepFrom(rec) };
      return {
        phase: 'upgrading',
        action: { type: 'set-desired-version', node: node.name, version: spec.version, channel: spec.channel, allowDowngrade: spec.allowDowngrade, record, drainStarted: rec.since },
        record,
        unschedulable: node.unschedulable,
        wakeAt: now + spec.nodeTimeoutSeconds * 1000,
      };
    }
    if (now >= deadline) {
      const blocked = remaining.flatMap((p) => {
        const why = evictionBlocker(p, spec.drain);
        return why === undefined ? [] : [`${p.namespace}/${p.name} ${why}`];
      });
      const names = remaining.slice(0, 5).map((p) => `${p.namespace}/${p.name}`).join(', ');
      const message = blocked.length > 0
        ? `drain blocked: ${blocked.slice(0, 5).join('; ')}`
        : `${remaining.length} pod(s) still on the node after ${spec.drain.timeoutSeconds}s (${names}): ${rec.message ?? 'evictions refused (a PodDisruptionBudget?)'}`;
      return failed(node, rec, now, blocked.length > 0 ? 'DrainBlocked' : 'DrainTimeout', message, true);
    }
    const evict = remaining.filter((p) => !p.terminating && evictionBlocker(p, spec.drain) === undefined);
    const action: NodeAction | undefined = evict.length > 0
      ? { type: 'evict', node: node.name, pods: evict.map((p) => ({ namespace: p.namespace, name: p.name })) }
      : undefined;
    return stay(node, rec, deadline, action);
  }

  if (reported !== undefined && failedAgentStates.includes(reported)) {
    const reasons = rollout.failureReasons ?? { failed: 'UpgradeFailed', fellBack: 'FellBack' };
    const reason = reported === 'fell-back' ? reasons.fellBack : reasons.failed;
    return failed(node, rec, now, reason, node.lastError ?? `agent reported ${reported}`, node.ready);
  }
  const timeout = rec.since + spec.nodeTimeoutSeconds * 1000;
  const onTarget = node.ready && node.currentVersion === rec.version;

  if (rec.phase === 'upgrading') {
    if (reported === 'committed' && onTarget) {
      const record: NodeRecord = { rollout: rec.rollout, version: rec.version, phase: 'verifying', since: now, ...keepFrom(rec) };
      const readyFrom = Math.max(now, node.readySince ?? now);
      return {
        phase: 'verifying',
        action: { type: 'uncordon', node: node.name, record },
        record,
        unschedulable: false,
        wakeAt: Math.min(readyFrom + spec.healthGate.readySeconds * 1000, now + spec.nodeTimeoutSeconds * 1000),
      };
    }
    if (now >= timeout) {
      const message = node.ready
        ? `agent state ${node.agentState ?? 'unknown'}, version ${node.currentVersion ?? 'unknown'} after ${spec.nodeTimeoutSeconds}s`
        : `node not Ready ${spec.nodeTimeoutSeconds}s after the upgrade started`;
      return failed(node, rec, now, 'NodeTimeout', message, node.ready);
    }
    return stay(node, rec, timeout);
  }

  // verifying: Ready on the target for the whole health gate
  if (onTarget) {
    const readyFrom = Math.max(rec.since, node.readySince ?? rec.since);
    const gateEnds = readyFrom + spec.healthGate.readySeconds * 1000;
    if (now >= gateEnds) {
      const record: NodeRecord = { rollout: rec.rollout, version: rec.version, phase: 'done', since: now, ...keepFrom(rec) };
      return { phase: 'done', action: { type: 'mark-done', node: node.name, record }, record, unschedulable: node.unschedulable, wakeAt: undefined };
    }
    if (now < timeout) return stay(node, rec, Math.min(gateEnds, timeout));
  }
  if (now >= timeout) {
    return failed(node, rec, now, 'HealthGateTimeout', `not Ready on ${rec.version} for ${spec.healthGate.readySeconds}s within ${spec.nodeTimeoutSeconds}s`, false);
  }
  return stay(node, rec, timeout);
}

function conditionMaker(previous: readonly RolloutCondition[] | undefined, now: number, observedGeneration: number) {
  return (type: RolloutCondition['type'], status: RolloutCondition['status'], reason: string, message: string): RolloutCondition => {
    const before = previous?.find((c) => c.type === type);
    const lastTransitionTime = before !== undefined && before.status === status ? before.lastTransitionTime : new Date(now).toISOString();
    return { type, status, reason, message, lastTransitionTime, observedGeneration };
  };
}

/** "Tue 22:00 UTC" */
export function formatWindowTime(ms: number): string {
  const d = new Date(ms);
  return `${weekdays[d.getUTCDay()]} ${String(d.getUTCHours()).padStart(2, '0')}:${String(d.getUTCMinutes()).padStart(2, '0')} UTC`;
}

const resultOrder: Record<NodePhase, number> = { failed: 0, draining: 1, upgrading: 1, verifying: 1, done: 2, pending: 3 };

export function planRollout(rollout: Rollout, cluster: ClusterState, now: number): RolloutPlan {
  const { spec, name } = rollout;
  const actions: RolloutAction[] = [];
  const counts: PhaseCounts = { total: 0, pending: 0, draining: 0, upgrading: 0, verifying: 0, done: 0, failed: 0 };
  const results: NodeResult[] = [];
  const candidates: NodeView[] = [];
  let wakeAt: number | undefined;
  let unavailable = 0;
  let selectedCount = 0;
  const wake = (t: number | undefined) => {
    if (t !== undefined && (wakeAt === undefined || t < wakeAt)) wakeAt = t;
  };

  let superseded = 0;
  for (const node of cluster.nodes) {
    const rec = node.record;
    const ours = rec !== undefined && rec.rollout === name;
    const inFlight = ours && inFlightPhases.includes(rec.phase);
    const claimedByNewer = cluster.newer?.some((r) => matchesSelector(node.labels, r.nodeSelector)) === true;
    const selected = matchesSelector(node.labels, spec.nodeSelector) && !claimedByNewer;
    if (claimedByNewer && matchesSelector(node.labels, spec.nodeSelector) && !inFlight) superseded++;
    if (selected) selectedCount++;
    if (!selected && !inFlight) continue;

    let outcome: NodeOutcome;
    if (inFlight) {
      outcome = advanceInFlight(rollout, node, rec, now);
    } else if (ours && rec.version === spec.version) {
      outcome = { phase: rec.phase, action: undefined, record: rec, unschedulable: node.unschedulable, wakeAt: undefined };
    } else if (node.currentVersion === spec.version) {
      outcome = { phase: 'done', action: undefined, record: undefined, unschedulable: node.unschedulable, wakeAt: undefined };
    } else {
      outcome = { phase: 'pending', action: undefined, record: undefined, unschedulable: node.unschedulable, wakeAt: undefined };
      const other = node.otherRecord;
      const busyElsewhere = (rec !== undefined && !ours && inFlightPhases.includes(rec.phase)) || (other !== undefined && inFlightPhases.includes(other.phase));
      if (node.ready && !node.unschedulable && !busyElsewhere) candidates.push(node);
    }

    if (outcome.action !== undefined) actions.push(outcome.action);
    wake(outcome.wakeAt);
    counts[outcome.phase]++;
    counts.total++;
    if (inFlightPhases.includes(outcome.phase) || !node.ready || outcome.unschedulable) unavailable++;
    if (outcome.phase !== 'pending') {
      const r: NodeResult = { name: node.name, phase: outcome.phase };
      if (node.agentState !== undefined) r.agentState = node.agentState;
      if (node.progress !== undefined && outcome.phase === 'upgrading') r.progress = `${Math.floor((node.progress.done / node.progress.total) * 100)}%`;
      if (node.currentVersion !== undefined) r.currentVersion = node.currentVersion;
      if (outcome.record?.reason !== undefined) r.reason = outcome.record.reason;
      if (outcome.record?.message !== undefined) r.message = outcome.record.message;
      if (outcome.record !== undefined) r.since = new Date(outcome.record.since).toISOString();
      results.push(r);
    }
  }

  const maxUnavailable = resolveMaxUnavailable(spec.maxUnavailable, selectedCount);
  const inFlightCount = counts.draining + counts.upgrading + counts.verifying;

  // failure budget: failures since the last resume
  let acknowledged = rollout.failuresAcknowledged;
  let paused = spec.paused;
  let pausedByBudget = false;
  if (rollout.pausedBy === 'failure-budget' && !spec.paused) {
    acknowledged = counts.failed;
    actions.push({ type: 'acknowledge-failures', version: spec.version, count: counts.failed });
  } else if (rollout.pausedBy === 'failure-budget') {
    pausedByBudget = true;
  }
  const budgetSpent = counts.failed - acknowledged >= spec.failureBudget;
  const back = budgetSpent && !paused && spec.onFailureBudget === 'rollback' && rollout.rolledBack === undefined ? previousVersion(name, spec.version, cluster.nodes) : undefined;
  if (back !== undefined && 'version' in back) {
    // halt: nothing new starts on this version; the next plan rolls the upgraded nodes back
    actions.push({ type: 'roll-back', from: spec.version, to: back.version, failed: counts.failed });
    paused = true;
  } else if (budgetSpent && !paused) {
    actions.push({ type: 'pause-rollout', reason: 'failure-budget', failed: counts.failed });
    paused = true;
    pausedByBudget = true;
  }

  const inWindow = isWithinAnyWindow(spec.maintenanceWindows, now);
  let waiting: string | undefined;
  const room = Math.max(0, maxUnavailable - unavailable);
  if (counts.pending > 0) {
    if (paused) {
      waiting = pausedByBudget
        ? `paused by the failure budget: ${counts.failed - acknowledged} node(s) failed, budget ${spec.failureBudget}; set spec.paused=false to resume`
        : 'paused: spec.paused is true';
    } else if (!inWindow) {
      const next = nextWindowOpening(spec.maintenanceWindows, now);
      waiting = `outside every maintenance window; ${next === undefined ? 'no window ever opens' : `next opens ${formatWindowTime(next)}`}`;
    } else if (candidates.length === 0) {
      waiting = `${counts.pending} pending node(s), none Ready and schedulable`;
    } else if (room === 0) {
      waiting = `maxUnavailable ${maxUnavailable} reached: ${unavailable} selected node(s) unavailable`;
    }
  } else if (selectedCount === 0 && superseded > 0) {
    const newer = (cluster.newer ?? []).map((r) => r.name).join(', ');
    waiting = `every node it selects (${superseded}) belongs to a newer OSUpgrade (${newer})`;
  } else if (selectedCount === 0) {
    waiting = `no node matches spec.nodeSelector ${JSON.stringify(spec.nodeSelector)}`;
  }
  if (!paused && inWindow && candidates.length > 0) {
    candidates.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    const from = (node: NodeView) => (node.currentVersion === undefined ? {} : { from: node.currentVersion });
    for (const node of candidates.slice(0, room)) {
      counts.pending--;
      if (rollout.drainFirst === false) {
        const record: NodeRecord = { rollout: name, version: spec.version, phase: 'upgrading', since: now, ...from(node) };
        actions.push({ type: 'set-desired-version', node: node.name, version: spec.version, channel: spec.channel, allowDowngrade: spec.allowDowngrade, record, drainStarted: now, starts: true });
        counts.upgrading++;
        results.push({ name: node.name, phase: 'upgrading', since: new Date(now).toISOString() });
        wake(now + spec.nodeTimeoutSeconds * 1000);
        continue;
      }
      const record: NodeRecord = { rollout: name, version: spec.version, phase: 'draining', since: now, ...from(node) };
      actions.push({ type: 'cordon', node: node.name, record });
      counts.draining++;
      results.push({ name: node.name, phase: 'draining', since: new Date(now).toISOString() });
      wake(now + spec.drain.timeoutSeconds * 1000);
    }
  } else if (!paused && !inWindow && candidates.length > 0) {
    wake(nextWindowOpening(spec.maintenanceWindows, now));
  }

  // after the starts: a node started just now (drained or not) is in flight
  const complete = counts.pending === 0 && counts.draining + counts.upgrading + counts.verifying === 0;
  const phase: RolloutPhase = complete ? 'Complete' : paused ? 'Paused' : !inWindow && inFlightCount === 0 ? 'Waiting' : 'Progressing';
  const condition = conditionMaker(rollout.previousStatus?.conditions, now, rollout.generation);
  const inFlightNow = counts.draining + counts.upgrading + counts.verifying;
  const summary = `${counts.done}/${counts.total} nodes on ${spec.version}, ${inFlightNow} in flight, max ${maxUnavailable} unavailable`;
  // which nodes failed and why, so the condition a person reads first names them
  const failedNodes = results.filter((r) => r.phase === 'failed').sort((a, b) => (a.name < b.name ? -1 : 1));
  const failedList = failedNodes.length === 0 ? '' : `: ${failedNodes.slice(0, 3).map((r) => `${r.name}${r.reason === undefined ? '' : ` (${r.reason})`}`).join(', ')}${failedNodes.length > 3 ? `, ${failedNodes.length - 3} more` : ''}`;
  const stalled = pausedByBudget || (complete && counts.failed > 0);
  const stalledReason = pausedByBudget ? 'FailureBudgetExceeded' : 'CompleteWithFailures';
  const stalledMessage = pausedByBudget
    ? `${counts.failed} node(s) failed${failedList} (budget ${spec.failureBudget}); set spec.paused=false to resume`
    : `${counts.failed} node(s) failed${failedList}; the rest are on ${spec.version}`;
  const reconciling = !complete && !paused;
  const conditions: RolloutCondition[] = [
    condition('Ready', complete && counts.failed === 0 ? 'True' : 'False',
      complete ? (counts.failed > 0 ? 'CompleteWithFailures' : 'AllNodesUpgraded') : paused ? (pausedByBudget ? 'FailureBudgetExceeded' : 'Paused') : phase === 'Waiting' ? 'OutsideMaintenanceWindow' : 'NodesUpgrading',
      complete ? `${counts.done} done, ${counts.failed} failed of ${counts.total}` : waiting ?? summary),
    condition('Reconciling', reconciling ? 'True' : 'False', reconciling ? (phase === 'Waiting' ? 'OutsideMaintenanceWindow' : 'NodesUpgrading') : complete ? 'Complete' : 'Paused',
      reconciling ? waiting ?? summary : ''),
    condition('Stalled', stalled ? 'True' : 'False', stalled ? stalledReason : 'NotStalled', stalled ? stalledMessage : ''),
    condition('Progressing', phase === 'Progressing' ? 'True' : 'False',
      phase === 'Progressing' ? 'NodesUpgrading' : phase === 'Waiting' ? 'OutsideMaintenanceWindow' : phase, summary),
    condition('Paused', paused ? 'True' : 'False', pausedByBudget ? 'FailureBudgetExceeded' : paused ? 'PausedBySpec' : 'NotPaused',
      pausedByBudget ? stalledMessage : paused ? 'spec.paused is true' : ''),
    condition('FailureBudgetExceeded', budgetSpent || pausedByBudget ? 'True' : 'False', budgetSpent || pausedByBudget ? 'TooManyFailures' : 'WithinBudget',
      `${counts.failed - acknowledged} failure(s) since the last resume, budget ${spec.failureBudget}${failedList}`),
    condition('Complete', complete ? 'True' : 'False', complete ? (counts.failed > 0 ? 'CompleteWithFailures' : 'AllNodesUpgraded') : 'InProgress',
      `${counts.done} done, ${counts.failed} failed of ${counts.total}`),
  ];

  results.sort((a, b) => resultOrder[a.phase] - resultOrder[b.phase] || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const nodes = results.slice(0, maxNodeResults);

  return {
    actions,
    status: {
      observedGeneration: rollout.generation,
      phase,
      targetVersion: spec.version,
      maxUnavailable,
      counts,
      nodes,
      nodesOmitted: results.length - nodes.length,
      conditions,
    },
    waiting,
    wakeAt,
  };
}
