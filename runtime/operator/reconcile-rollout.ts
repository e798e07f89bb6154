/**
 * One reconcile: observe the cluster, plan with the pure planner, apply the plan, write status.
 * All state comes from the cluster each time (node records, the OSUpgrade's marks), so an operator
 * restarted mid-rollout carries on where the cluster says it is.
 */
import { asKubeosError, isKubeosError, KubeosError } from '../core/errors.js';
import type { EventInput, KubeApi } from '../fleet/kube-api.js';
import { configKeys, configView, encodeRecord, planVersionLabels, readNodeView, readPodView, upgradeKeys, type NodePatch, type NodeView, type RolloutKeys } from '../fleet/node-protocol.js';
import { readConfigRollout } from '../fleet/osconfig.js';
import { readRollout, rollBackPatch, rolloutAnnotations, type OSUpgradeObject, type OSUpgradeStatus, type Rollout } from '../fleet/osupgrade.js';
import { nodePatchFor, planOrphanReleases, planRollout, type ClusterState, type NodeAction, type RolloutAction, type RolloutPlan } from './plan-rollout.js';

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
  kind: RolloutKind['kind'];
  plan: RolloutPlan | undefined;
  invalid: KubeosError | undefined;
  applied: number;
  /** The plan's actions that were written (evictions not counted). */
  appliedActions: RolloutAction[];
  blocked: BlockedEviction[];
  /** Writes that failed; the next reconcile retries them from the cluster's state. */
  errors: KubeosError[];
}

async function observeNodes(api: KubeApi, kind: RolloutKind, rollout: string): Promise<NodeView[]> {
  const views = (await api.listNodes()).map((n) => kind.view(readNodeView(n)));
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

function configEventFor(rollout: string, action: RolloutAction): EventDraft | undefined {
  switch (action.type) {
    case 'cordon':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosDraining', message: `cordoned and draining for OSConfig ${rollout} (${action.record.version} changes the kernel command line)` };
    case 'set-desired-version':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosConfigRequested', message: `asked the agent to apply OSConfig ${rollout} (${action.version})` };
    case 'uncordon':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosConfigApplied', message: `${action.record.version} of OSConfig ${rollout} committed; health gate started` };
    case 'mark-done':
      return { kind: 'Node', name: action.node, type: 'Normal', reason: 'KubeosConfigDone', message: `Ready with ${action.record.version} of OSConfig ${rollout} through the health gate` };
    case 'mark-failed':
      return { kind: 'Node', name: action.node, type: 'Warning', reason: `KubeosConfig${action.record.reason ?? 'Failed'}`, message: action.record.message ?? 'configuration failed' };
    case 'pause-rollout':
      return { kind: 'OSConfig', name: rollout, type: 'Warning', reason: 'FailureBudgetExceeded', message: `${action.failed} node(s) failed; rollout paused (set spec.paused=false to resume)` };
    case 'acknowledge-failures':
      return { kind: 'OSConfig', name: rollout, type: 'Normal', reason: 'Resumed', message: `resumed; ${action.count} earlier failure(s) no longer count against the budget` };
    case 'roll-back':
    case 'evict':
      return undefined;
  }
}

/** What differs between reconciling an OSUpgrade and an OSConfig; the planner is the same. */
export interface RolloutKind {
  kind: 'OSUpgrade' | 'OSConfig';
  invalidCode: 'E_OSUPGRADE_INVALID' | 'E_OSCONFIG_INVALID';
  /** The annotations the operator writes for this kind. */
  keys: RolloutKeys;
  read: (object: OSUpgradeObject) => Rollout;
  /** The node as this kind's planner sees it. */
  view: (node: NodeView) => NodeView;
  eventFor: (rollout: string, action: RolloutAction) => EventDraft | undefined;
  list: (api: KubeApi) => Promise<OSUpgradeObject[]>;
  patchObject: (api: KubeApi, name: string, patch: Record<string, unknown>) => Promise<void>;
  patchStatus: (api: KubeApi, name: string, status: OSUpgradeStatus) => Promise<void>;
}

export const osUpgradeKind: RolloutKind = {
  kind: 'OSUpgrade',
  invalidCode: 'E_OSUPGRADE_INVALID',
  keys: upgradeKeys,
  read: readRollout,
  view: (node) => node,
  eventFor,
  list: (api) => api.listOSUpgrades(),
  patchObject: (api, name, patch) => api.patchOSUpgrade(name, patch),
  patchStatus: (api, name, status) => api.patchOSUpgradeStatus(name, status),
};

export const osConfigKind: RolloutKind = {
  kind: 'OSConfig',
  invalidCode: 'E_OSCONFIG_INVALID',
  keys: configKeys,
  read: (object) => readConfigRollout(object).rollout,
  view: configView,
  eventFor: configEventFor,
  list: (api) => api.listOSConfigs(),
  patchObject: (api, name, patch) => api.patchOSConfig(name, patch),
  patchStatus: (api, name, status) => api.patchOSConfigStatus(name, status),
};

function canonical(value: unknown): string {
  return JSON.stringify(value, (_key, v: unknown) =>
    typeof v === 'object' && v !== null && !Array.isArray(v)
      ? Object.fromEntries(Object.entries(v as Record<string, unknown>).filter(([, x]) => x !== undefined).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)))
      : v);
}


/** Reconciles one OSUpgrade. Throws only E_LEADERSHIP_LOST; everything else is in the report. */
export async function reconcileRollout(object: OSUpgradeObject, options: ReconcileOptions, newer: ClusterState['newer'] = []): Promise<ReconcileReport> {
  return reconcileOne(osUpgradeKind, object, options, newer);
}

/** Reconciles one OSUpgrade or OSConfig. Throws only E_LEADERSHIP_LOST; everything else is in the report. */
export async function reconcileOne(kind: RolloutKind, object: OSUpgradeObject, options: ReconcileOptions, newer: ClusterState['newer'] = []): Promise<ReconcileReport> {
  const { api } = options;
  const name = object.metadata?.name ?? '';
  const report: ReconcileReport = { rollout: name, kind: kind.kind, plan: undefined, invalid: undefined, applied: 0, appliedActions: [], blocked: [], errors: [] };
  const guard = options.assertLeader ?? (() => {});
  const component = options.component ?? 'kubeos-operator';
  const recorded = options.recorded ?? new Set<string>();

  const uids = new Map<string, string | undefined>();
  const record = async (draft: EventDraft) => {
    if (options.dryRun) return;
    const event: EventInput = { ...draft, uid: draft.kind === 'Node' ? uids.get(draft.name) : object.metadata?.uid };
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
    rollout = kind.read(object);
  } catch (error) {
    if (!isKubeosError(error, kind.invalidCode)) throw error;
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
      await kind.patchStatus(api, name, status as OSUpgradeStatus).catch((e: unknown) => report.errors.push(asKubeosError(e, 'E_KUBERNETES')));
      await record({ kind: kind.kind, name, type: 'Warning', reason: 'InvalidSpec', message: error.message });
    }
    return report;
  }

  const nodes = await observeNodes(api, kind, name);
  for (const node of nodes) uids.set(node.name, node.uid);
  const now = options.now();
  const plan = planRollout(rollout, { nodes, newer }, now);
  report.plan = plan;
  if (options.dryRun) return report;

  let startsAllowed = true;
  for (const action of plan.actions) {
    // Capacity for new nodes was computed assuming every earlier action took effect.
    if ((action.type === 'cordon' || (action.type === 'set-desired-version' && action.starts === true)) && !startsAllowed) continue;
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
          await api.patchNode(action.node, { metadata: { annotations: { [kind.keys.record]: encodeRecord({ ...current, message }) } } });
        }
        continue;
      }
      if (action.type === 'roll-back') {
        await kind.patchObject(api, name, rollBackPatch(action.from, action.to));
      } else if (action.type === 'pause-rollout') {
        // spec.paused and the mark that the budget did it go in one write
        await kind.patchObject(api, name, { metadata: { annotations: { [rolloutAnnotations.pausedBy]: 'failure-budget' } }, spec: { paused: true } });
      } else if (action.type === 'acknowledge-failures') {
        await kind.patchObject(api, name, {
          metadata: { annotations: { [rolloutAnnotations.pausedBy]: null, [rolloutAnnotations.failuresAcknowledged]: JSON.stringify({ version: action.version, count: action.count }) } },
        });
      } else {
        // a rollout that does not drain leaves the node's schedulability alone
        const patch = nodePatchFor(action, kind.keys, rollout.drainFirst !== false);
        if (patch !== undefined) await api.patchNode(action.node, patch);
      }
      report.applied++;
      report.appliedActions.push(action);
      const event = kind.eventFor(name, action);
      if (event !== undefined) await record(event);
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
      await kind.patchStatus(api, name, plan.status);
    } catch (error) {
      if (isKubeosError(error, 'E_LEADERSHIP_LOST')) throw error;
      report.errors.push(asKubeosError(error, 'E_KUBERNETES'));
    }
  }
  return report;
}

/**
 * One pass over the nodes after the rollouts: keeps the kubeos.io/version label equal to the
 * version each node's agent reports (`kubectl get nodes -L kubeos.io/version`, node selectors), and
 * releases nodes held by a rollout that was deleted (`live`: the names of the OSUpgrades and
 * OSConfigs that exist). Returns the failures.
 */
export async function syncNodes(options: ReconcileOptions, live: { upgrades: ReadonlySet<string>; configs: ReadonlySet<string> }): Promise<KubeosError[]> {
  const errors: KubeosError[] = [];
  const views = (await options.api.listNodes()).map(readNodeView);
  const now = options.now();
  const releases = [
    ...planOrphanReleases(views, live.upgrades, 'OSUpgrade', now).map((action) => ({ action, keys: upgradeKeys })),
    ...planOrphanReleases(views.map(configView), live.configs, 'OSConfig', now).map((action) => ({ action, keys: configKeys })),
  ];
  const patches: Array<{ node: string; patch: NodePatch; released?: NodeAction }> = [
    ...planVersionLabels(views),
    ...releases.map(({ action, keys }) => ({ node: action.node, patch: nodePatchFor(action, keys)!, released: action })),
  ];
  if (options.dryRun) return errors;
  for (const entry of patches) {
    try {
      options.assertLeader?.();
      await options.api.patchNode(entry.node, entry.patch);
      if (entry.released?.type === 'mark-failed') {
        const uid = views.find((v) => v.name === entry.node)?.uid;
        await options.api.recordEvent({ kind: 'Node', name: entry.node, uid, type: 'Warning', reason: 'KubeosRolloutDeleted', message: entry.released.record.message ?? 'released' }, options.component ?? 'kubeos-operator', now)
          .catch((error: unknown) => errors.push(asKubeosError(error, 'E_KUBERNETES')));
      }
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
 * Reconciles every OSUpgrade, then every OSConfig, oldest first, each against a fresh view of the
 * nodes. A node selected by several of one kind belongs to the newest (creation time, then name),
 * so each is told the selectors of the valid ones of its kind created after it.
 */
export async function reconcileAll(options: ReconcileOptions): Promise<ReconcileReport[]> {
  const reports: ReconcileReport[] = [];
  for (const kind of [osUpgradeKind, osConfigKind]) {
    const objects = await kind.list(options.api);
    const name = (o: OSUpgradeObject) => o.metadata?.name ?? '';
    objects.sort((a, b) => createdAt(a) - createdAt(b) || (name(a) < name(b) ? -1 : name(a) > name(b) ? 1 : 0));
    const selectors = objects.map((o) => {
      try {
        return { name: name(o), nodeSelector: kind.read(o).spec.nodeSelector };
      } catch {
        return undefined; // an invalid one claims no node
      }
    });
    for (const [i, object] of objects.entries()) {
      const newer = selectors.slice(i + 1).filter((s): s is NonNullable<typeof s> => s !== undefined);
      reports.push(await reconcileOne(kind, object, options, newer));
    }
  }
  return reports;
}
