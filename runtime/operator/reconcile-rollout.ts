/**
 * One reconcile: observe the cluster, plan with the pure planner, apply the plan, write status.
 * All state comes from the cluster each time (node records, the OSUpgrade's marks), so an operator
 * restarted mid-rollout carries on where the cluster says it is.
 */
import { asKubeosError, isKubeosError, KubeosError } from '../core/errors.js';
import type { EventInput, KubeApi } from '../fleet/kube-api.js';
import { annotations, encodeRecord, planVersionLabels, readNodeView, readPodView, type NodeView } from '../fleet/node-protocol.js';
import { readRollout, rollBackPatch, rolloutAnnotations, type OSUpgradeObject, type OSUpgradeStatus } from '../fleet/osupgrade.js';
import { nodePatchFor, planRollout, type ClusterState, type RolloutAction, type RolloutPlan } from './plan-rollout.js';

export interface ReconcileOptions {
  api: KubeApi;
  now: () => number;
  /** Throws E_LEADERSHIP_LOST when this replica may no longer write; checked before every write. */
  assertLeader?: () => void;
  /** Plan only: no writes. */
  dryRun?: boolean;
  component?: string;
  /** Events already recorded by this process (so a PDB that blocks for an hour is one Event, not hundreds). */
  recorded?: Set<string>;
}

export interface BlockedEviction {
  node: string;
  pod: string;
  message: string;
}

export interface ReconcileReport {
  rollout: string;
  plan: RolloutPlan | undefined;
  invalid: KubeosError | undefined;
  applied: number;
  /** The plan's actions that were written (evictions not counted). */
  appliedActions: RolloutAction[];
  blocked: BlockedEviction[];
  /** Writes that failed; the next reconcile retries them from the cluster's state. */
  errors: KubeosError[];
}

async function observeNodes(api: KubeApi, rollout: string): Promise<NodeView[]> {
  const views = (await api.listNodes()).map(readNodeView);
  for (const view of views) {
    if (view.record?.rollout === rollout && view.record.phase === 'draining') {
      view.pods = (await api.listPodsOnNode(view.name)).map(readPodView);
    }
  }
  return views;
}

type EventDraft = Omit<EventInput, 'uid'>;

function eventFor(rollout: string, action: RolloutAction): EventDraft | undefined {
  switch (action.type) {
    case 'cordon':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosDraining', message: `cordoned and draining for OSUpgrade ${rollout} (version ${action.record.version})` };
    case 'set-desired-version':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosUpgradeRequested', message: `drained; asked the agent to upgrade to ${action.version} from channel ${action.channel}` };
    case 'uncordon':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosUpgraded', message: `running ${action.record.version}; uncordoned, health gate started` };
    case 'mark-done':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosUpgradeDone', message: `Ready on ${action.record.version} through the health gate` };
    case 'mark-failed':
      return { kind: 'Node', name: action.node, type: 'Warning', reason: `KubeosUpgrade${action.record.reason ?? 'Failed'}`, message: action.record.message ?? 'upgrade failed' };
    case 'roll-back':
      return { kind: 'OSUpgrade', name: rollout, type: 'Warning', reason: 'RolledBack', message: `${action.failed} node(s) failed on ${action.from} (onFailureBudget: rollback): rolling the upgraded nodes back to ${action.to}` };
    case 'pause-rollout':
      return { kind: 'OSUpgrade', name: rollout, type: 'Warning', reason: 'FailureBudgetExceeded', message: `${action.failed} node(s) failed; rollout paused (set spec.paused=false to resume)` };
    case 'acknowledge-failures':
      return { kind: 'OSUpgrade', name: rollout, type: 'Normal', reason: 'Resumed', message: `resumed; ${action.count} earlier failure(s) no longer count against the budget` };
    case 'evict':
      return undefined;
  }
}

function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    typeof v === 'object' && v !== null && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v);
}


/** Reconciles one OSUpgrade. Throws only E_LEADERSHIP_LOST; everything else is in the report. */
export async function reconcileRollout(object: OSUpgradeObject, options: ReconcileOptions, newer: ClusterState['newer'] = []): Promise<ReconcileReport> {
  const { api } = options;
  const name = object.metadata?.name ?? '';
  const report: ReconcileReport = { rollout: name, plan: undefined, invalid: undefined, applied: 0, appliedActions: [], blocked: [], errors: [] };
  const guard = options.assertLeader ?? (() => {});
  const component = options.component ?? 'kubeos-operator';
  const recorded = options.recorded ?? new Set<string>();

  const uids = new Map<string, string | undefined>();
  const record = async (draft: EventDraft) => {
    if (options.dryRun) return;
    const event: EventInput = { ...draft, uid: draft.kind === 'OSUpgrade' ? object.metadata?.uid : uids.get(draft.name) };
    try {
      guard();
      await api.recordEvent(event, component, options.now());
    } catch (error) {
      if (isKubeosError(error, 'E_LEADERSHIP_LOST')) throw error;
      report.errors.push(asKubeosError(error, 'E_KUBERNETES')); // events are best effort
    }
  };

  let rollout;
  try {
    rollout = readRollout(object);
  } catch (error) {
    if (!isKubeosError(error, 'E_OSUPGRADE_INVALID')) throw error;
    report.invalid = error;
    const now = options.now();
    const observedGeneration = object.metadata?.generation ?? 0;
    const at = new Date(now).toISOString();
    const status: Partial<OSUpgradeStatus> = {
      observedGeneration,
      phase: 'Invalid',
      conditions: [
        { type: 'Ready', status: 'False', reason: 'SpecInvalid', message: error.message, lastTransitionTime: at, observedGeneration },
        { type: 'Stalled', status: 'True', reason: 'SpecInvalid', message: error.message, lastTransitionTime: at, observedGeneration },
        { type: 'Reconciling', status: 'False', reason: 'SpecInvalid', message: 'fix the spec; nothing is done until then', lastTransitionTime: at, observedGeneration },
        { type: 'Invalid', status: 'True', reason: 'SpecInvalid', message: error.message, lastTransitionTime: at, observedGeneration },
      ],
    };
    if (!options.dryRun && object.status?.phase !== 'Invalid') {
      guard();
      await api.patchOSUpgradeStatus(name, status as OSUpgradeStatus).catch((e: unknown) => report.errors.push(asKubeosError(e, 'E_KUBERNETES')));
      await record({ kind: 'OSUpgrade', name, type: 'Warning', reason: 'InvalidSpec', message: error.message });
    }
    return report;
  }

  const nodes = await observeNodes(api, name);
  for (const node of nodes) uids.set(node.name, node.uid);
  const now = options.now();
  const plan = planRollout(rollout, { nodes, newer }, now);
  report.plan = plan;
  if (options.dryRun) return report;

  let startsAllowed = true;
  for (const action of plan.actions) {
    // Capacity for new nodes was computed assuming every earlier action took effect.
    if (action.type === 'cordon' && !startsAllowed) continue;
    try {
      guard();
      if (action.type === 'evict') {
        for (const pod of action.pods) {
          guard();
          const result = await api.evictPod(pod.namespace, pod.name);
          if (result.outcome !== 'blocked') continue;
          report.blocked.push({ node: action.node, pod: `${pod.namespace}/${pod.name}`, message: result.message });
          const key = `blocked/${action.node}/${pod.namespace}/${pod.name}`;
          if (!recorded.has(key)) {
            recorded.add(key);
            await record({ kind: 'Node', name: action.node, type: 'Warning', reason: 'KubeosEvictionBlocked', message: `evicting ${pod.namespace}/${pod.name}: ${result.message}; retrying` });
          }
        }
        // what holds the drain up goes on the node's record: rollout status shows it, and a drain
        // that times out names it
        const blocked = report.blocked.filter((b) => b.node === action.node);
        const current = nodes.find((n) => n.name === action.node)?.record;
        const message = blocked.length === 0 ? undefined : `blocked: ${blocked.slice(0, 3).map((b) => `${b.pod} by ${b.message}`).join('; ')}`;
        if (current !== undefined && message !== undefined && current.message !== message) {
          guard();
          await api.patchNode(action.node, { metadata: { annotations: { [annotations.rollout]: encodeRecord({ ...current, message }) } } });
        }
        continue;
      }
      if (action.type === 'roll-back') {
        await api.patchOSUpgrade(name, rollBackPatch(action.from, action.to));
      } else if (action.type === 'pause-rollout') {
        // spec.paused and the mark that the budget did it go in one write
        await api.patchOSUpgrade(name, { metadata: { annotations: { [rolloutAnnotations.pausedBy]: 'failure-budget' } }, spec: { paused: true } });
      } else if (action.type === 'acknowledge-failures') {
        await api.patchOSUpgrade(name, {
          metadata: { annotations: { [rolloutAnnotations.pausedBy]: null, [rolloutAnnotations.failuresAcknowledged]: JSON.stringify({ version: action.version, count: action.count }) } },
        });
      } else {
        const patch = nodePatchFor(action);
        if (patch !== undefined) await api.patchNode(action.node, patch);
      }
      report.applied++;
      report.appliedActions.push(action);
      await record(eventFor(name, action)!);
    } catch (error) {
      if (isKubeosError(error, 'E_LEADERSHIP_LOST')) throw error;
      report.errors.push(asKubeosError(error, 'E_KUBERNETES'));
      if (action.type !== 'cordon') startsAllowed = false;
    }
  }

  // Compare canonically: the API server returns keys in its own order, and a needless status write
  // would come back as a watch event and another reconcile, forever.
  if (canonical(object.status ?? {}) !== canonical(plan.status)) {
    try {
      guard();
      await api.patchOSUpgradeStatus(name, plan.status);
    } catch (error) {
      if (isKubeosError(error, 'E_LEADERSHIP_LOST')) throw error;
      report.errors.push(asKubeosError(error, 'E_KUBERNETES'));
    }
  }
  return report;
}

/**
 * Keeps the kubeos.io/version label equal to the version each node's agent reports, so
 * `kubectl get nodes -L kubeos.io/version` and node selectors see it. Returns the failures.
 */
export async function syncVersionLabels(options: ReconcileOptions): Promise<KubeosError[]> {
  const errors: KubeosError[] = [];
  const patches = planVersionLabels((await options.api.listNodes()).map(readNodeView));
  if (options.dryRun) return errors;
  for (const { node, patch } of patches) {
    try {
      options.assertLeader?.();
      await options.api.patchNode(node, patch);
    } catch (error) {
      if (isKubeosError(error, 'E_LEADERSHIP_LOST')) throw error;
      errors.push(asKubeosError(error, 'E_KUBERNETES'));
    }
  }
  return errors;
}

/** When an OSUpgrade was created (ms); the API server always sets it, a test object may not. */
function createdAt(object: OSUpgradeObject): number {
  const at = object.metadata?.creationTimestamp;
  return at === undefined ? 0 : new Date(at).getTime();
}

/**
 * Reconciles every OSUpgrade, oldest first, each against a fresh view of the nodes. A node selected
 * by several belongs to the newest (creation time, then name), so each is told the selectors of the
 * valid ones created after it.
 */
export async function reconcileAll(options: ReconcileOptions): Promise<ReconcileReport[]> {
  const objects = await options.api.listOSUpgrades();
  const name = (o: OSUpgradeObject) => o.metadata?.name ?? '';
  objects.sort((a, b) => createdAt(a) - createdAt(b) || (name(a) < name(b) ? -1 : name(a) > name(b) ? 1 : 0));
  const selectors = objects.map((o) => {
    try {
      return { name: name(o), nodeSelector: readRollout(o).spec.nodeSelector };
    } catch {
      return undefined; // an invalid OSUpgrade claims no node
    }
  });
  const reports: ReconcileReport[] = [];
  for (const [i, object] of objects.entries()) {
    const newer = selectors.slice(i + 1).filter((s): s is NonNullable<typeof s> => s !== undefined);
    reports.push(await reconcileRollout(object, options, newer));
  }
  return reports;
}
