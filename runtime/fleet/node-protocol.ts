/**
 * The handshake between the operator and the agent on each node, carried by Node annotations.
 * Ownership is split so that no annotation has two writers:
 * - the operator writes `desired-version`, `desired-channel` and its bookkeeping `rollout`;
 * - the agent writes `current-version`, `state`, `state-version` and `last-error`.
 * `state-version` ties a reported state to the desired version it is about, so a `fell-back` left
 * over from an earlier attempt is never read as the outcome of a new one.
 * Everything here is pure: it reads plain Node-shaped objects and returns patches as data.
 */

export const annotations = {
  desiredVersion: 'kubeos.io/desired-version',
  desiredChannel: 'kubeos.io/desired-channel',
  /** "true" when the rollout allows installing a version older than the running one (a fleet rollback). */
  allowDowngrade: 'kubeos.io/allow-downgrade',
  /** The agent's install progress, "DONE/TOTAL" bytes, while it writes the standby slot. */
  progress: 'kubeos.io/progress',
  currentVersion: 'kubeos.io/current-version',
  state: 'kubeos.io/state',
  stateVersion: 'kubeos.io/state-version',
  lastError: 'kubeos.io/last-error',
  /** The operator's per-node record (JSON, see NodeRecord); lives on the Node so a restarted operator resumes from it. */
  rollout: 'kubeos.io/rollout',
} as const;

/**
 * The same handshake for an OSConfig, in annotations of its own, so a configuration and an OS
 * upgrade never read each other's state:
 * - the operator writes `desired-config` (the configuration's digest), `config-source` (the
 *   OSConfig's name, where the agent reads the configuration) and its record `config-rollout`;
 * - the agent writes `config-applied` (the digest in force), `config-state`, `config-state-for`
 *   (the digest that state is about) and `config-error`.
 */
export const configAnnotations = {
  desired: 'kubeos.io/desired-config',
  source: 'kubeos.io/config-source',
  rollout: 'kubeos.io/config-rollout',
  applied: 'kubeos.io/config-applied',
  state: 'kubeos.io/config-state',
  stateFor: 'kubeos.io/config-state-for',
  lastError: 'kubeos.io/config-error',
} as const;

/** The annotations the operator writes for one kind of rollout. */
export interface RolloutKeys {
  /** Its per-node record. */
  record: string;
  /** What the agent should install or apply. */
  desired: string;
  /** Where from: the channel, or the OSConfig. */
  source: string;
  /** Whether an older version may be installed (upgrades only). */
  allowDowngrade?: string;
}

export const upgradeKeys: RolloutKeys = { record: annotations.rollout, desired: annotations.desiredVersion, source: annotations.desiredChannel, allowDowngrade: annotations.allowDowngrade };
export const configKeys: RolloutKeys = { record: configAnnotations.rollout, desired: configAnnotations.desired, source: configAnnotations.source };

/** The label the operator keeps equal to the version a node runs (`kubectl get nodes -L kubeos.io/version`). */
export const versionLabel = 'kubeos.io/version';

export const agentStates = ['idle', 'downloading', 'installing', 'rebooting', 'trying', 'committed', 'failed', 'fell-back'] as const;
export type AgentState = (typeof agentStates)[number];

/** Agent states that end an attempt without the new version. */
export const failedAgentStates: readonly AgentState[] = ['failed', 'fell-back'];

export const nodePhases = ['pending', 'draining', 'upgrading', 'verifying', 'done', 'failed'] as const;
export type NodePhase = (typeof nodePhases)[number];

/** Phases in which the operator holds a node: they count against maxUnavailable. */
export const inFlightPhases: readonly NodePhase[] = ['draining', 'upgrading', 'verifying'];

/** What the operator remembers about one node, stored on the node itself. */
export interface NodeRecord {
  /** Name of the OSUpgrade that owns this record. */
  rollout: string;
  /** The target version this record is about; a record for another version is history. */
  version: string;
  phase: Exclude<NodePhase, 'pending'>;
  /** When the node entered this phase (ms since the epoch). */
  since: number;
  reason?: string;
  message?: string;
  /** The version the node ran when the rollout took it: what `kubeos rollout undo` goes back to. */
  from?: string;
}

/** A pod as the drain logic needs to see it. */
export interface PodView {
  namespace: string;
  name: string;
  /** Kind of the controlling owner (`DaemonSet`, `ReplicaSet`, ...); undefined for a bare pod. */
  ownerKind: string | undefined;
  /** A static pod mirrored by the kubelet; the API cannot evict it. */
  mirror: boolean;
  /** Uses an emptyDir volume, whose data an eviction deletes. */
  emptyDir: boolean;
  /** Succeeded or Failed: holds nothing up. */
  finished: boolean;
  /** Has a deletionTimestamp: already on its way out. */
  terminating: boolean;
}

/** A node as the planner sees it: parsed, no strings to interpret. */
export interface NodeView {
  name: string;
  uid: string | undefined;
  labels: Readonly<Record<string, string>>;
  unschedulable: boolean;
  ready: boolean;
  /** lastTransitionTime of the Ready condition (ms), when known. */
  readySince: number | undefined;
  desiredVersion: string | undefined;
  currentVersion: string | undefined;
  agentState: AgentState | undefined;
  stateVersion: string | undefined;
  lastError: string | undefined;
  /** The agent's install progress (bytes), while it writes the standby slot. */
  progress: { done: number; total: number } | undefined;
  record: NodeRecord | undefined;
  /** Pods on the node; only filled in for nodes the operator is draining. */
  pods?: readonly PodView[];
  /** The record of the other kind of rollout (an OSConfig's while planning an upgrade, and back): a node in flight there is not started here. */
  otherRecord?: NodeRecord | undefined;
  /** The OSConfig side of the handshake, when the node has any of it. */
  config?: ConfigSide;
}

/** What a Node's annotations say about its OS configuration. */
export interface ConfigSide {
  desired: string | undefined;
  applied: string | undefined;
  state: AgentState | undefined;
  stateFor: string | undefined;
  lastError: string | undefined;
  record: NodeRecord | undefined;
}

/** The subset of a v1 Node this module reads; matches both client-node's V1Node and plain JSON. */
export interface NodeLike {
  metadata?: { name?: string; uid?: string; resourceVersion?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: { unschedulable?: boolean };
  status?: { conditions?: Array<{ type?: string; status?: string; lastTransitionTime?: Date | string }> };
}

export interface PodLike {
  metadata?: {
    name?: string;
    namespace?: string;
    annotations?: Record<string, string>;
    ownerReferences?: Array<{ kind?: string; controller?: boolean }>;
    deletionTimestamp?: Date | string;
  };
  spec?: { volumes?: Array<{ emptyDir?: unknown }> };
  status?: { phase?: string };
}

/** A Kubernetes time (a Date from client-node, or an RFC 3339 string) in ms; undefined when unreadable. */
export function toMs(value: unknown): number | undefined {
  if (!(value instanceof Date) && typeof value !== 'string') return undefined;
  const ms = value instanceof Date ? value.getTime() : Date.parse(value);
  return Number.isNaN(ms) ? undefined : ms;
}

function parseAgentState(value: string | undefined): AgentState | undefined {
  return (agentStates as readonly string[]).includes(value ?? '') ? (value as AgentState) : undefined;
}

/** Decodes the operator's record; anything unreadable counts as no record (the node is pending). */
export function decodeRecord(value: string | undefined): NodeRecord | undefined {
  if (value === undefined) return undefined;
  try {
    const raw = JSON.parse(value) as Record<string, unknown>;
    const phase = raw['phase'];
    const since = typeof raw['since'] === 'string' ? Date.parse(raw['since']) : Number.NaN;
    if (typeof raw['rollout'] !== 'string' || typeof raw['version'] !== 'string') return undefined;
    if (typeof phase !== 'string' || phase === 'pending' || !(nodePhases as readonly string[]).includes(phase)) return undefined;
    if (Number.isNaN(since)) return undefined;
    const record: NodeRecord = { rollout: raw['rollout'], version: raw['version'], phase: phase as NodeRecord['phase'], since };
    if (typeof raw['reason'] === 'string') record.reason = raw['reason'];
    if (typeof raw['message'] === 'string') record.message = raw['message'];
    if (typeof raw['from'] === 'string') record.from = raw['from'];
    return record;
  } catch {
    return undefined;
  }
}

function parseProgress(value: string | undefined): { done: number; total: number } | undefined {
  const match = /^(\d+)\/(\d+)$/.exec(value ?? '');
  if (match === null) return undefined;
  const done = Number(match[1]);
  const total = Number(match[2]);
  return total > 0 && done <= total ? { done, total } : undefined;
}

export function encodeRecord(record: NodeRecord): string {
  return JSON.stringify({ ...record, since: new Date(record.since).toISOString() });
}

export function readNodeView(node: NodeLike): NodeView {
  const a = node.metadata?.annotations ?? {};
  const ready = node.status?.conditions?.find((c) => c.type === 'Ready');
  return {
    name: node.metadata?.name ?? '',
    uid: node.metadata?.uid,
    labels: node.metadata?.labels ?? {},
    unschedulable: node.spec?.unschedulable === true,
    ready: ready?.status === 'True',
    readySince: ready?.status === 'True' ? toMs(ready.lastTransitionTime) : undefined,
    desiredVersion: a[annotations.desiredVersion],
    currentVersion: a[annotations.currentVersion],
    agentState: parseAgentState(a[annotations.state]),
    stateVersion: a[annotations.stateVersion],
    lastError: a[annotations.lastError],
    progress: parseProgress(a[annotations.progress]),
    record: decodeRecord(a[annotations.rollout]),
    otherRecord: decodeRecord(a[configAnnotations.rollout]),
    config: {
      desired: a[configAnnotations.desired],
      applied: a[configAnnotations.applied],
      state: parseAgentState(a[configAnnotations.state]),
      stateFor: a[configAnnotations.stateFor],
      lastError: a[configAnnotations.lastError],
      record: decodeRecord(a[configAnnotations.rollout]),
    },
  };
}

/**
 * The node as an OSConfig rollout sees it: the planner's version fields hold configuration digests
 * and the records are the OSConfig ones, so the one planner runs both kinds of rollout.
 */
export function configView(node: NodeView): NodeView {
  const c = node.config;
  return {
    ...node,
    desiredVersion: c?.desired,
    currentVersion: c?.applied,
    agentState: c?.state,
    stateVersion: c?.stateFor,
    lastError: c?.lastError,
    progress: undefined,
    record: c?.record,
    otherRecord: node.record,
  };
}

/** What the agent reports about the configuration in force, as a merge patch of its own Node (no progress: an apply has no bytes to count). */
export function agentConfigReportPatch(report: AgentReport): NodePatch {
  return agentReportPatch(report, { state: configAnnotations.state, lastError: configAnnotations.lastError, stateVersion: configAnnotations.stateFor, currentVersion: configAnnotations.applied });
}

export function readPodView(pod: PodLike): PodView {
  const owner = pod.metadata?.ownerReferences?.find((o) => o.controller === true);
  const phase = pod.status?.phase;
  return {
    namespace: pod.metadata?.namespace ?? '',
    name: pod.metadata?.name ?? '',
    ownerKind: owner?.kind,
    mirror: pod.metadata?.annotations?.['kubernetes.io/config.mirror'] !== undefined,
    emptyDir: (pod.spec?.volumes ?? []).some((v) => v.emptyDir !== undefined && v.emptyDir !== null),
    finished: phase === 'Succeeded' || phase === 'Failed',
    terminating: pod.metadata?.deletionTimestamp !== undefined && pod.metadata.deletionTimestamp !== null,
  };
}

/** A JSON merge patch for a Node; `null` deletes an annotation. */
export interface NodePatch {
  metadata?: { annotations?: Record<string, string | null>; labels?: Record<string, string | null> };
  spec?: { unschedulable?: boolean | null };
}

/** What the agent reports about itself, as a merge patch of its own Node. */
export interface AgentReport {
  state: AgentState;
  /** Bytes of the standby slot written so far and in all, while installing; cleared otherwise. */
  progress?: { done: number; total: number };
  /** The desired version this state is about. */
  stateVersion?: string;
  currentVersion?: string;
  /** Cleared when undefined. */
  lastError?: string;
}

/** The annotations an agent report goes to: the upgrade's, or (agentConfigReportPatch) the configuration's. */
interface ReportKeys {
  state: string;
  lastError: string;
  stateVersion: string;
  currentVersion: string;
  progress?: string;
}

export function agentReportPatch(report: AgentReport, keys: ReportKeys = annotations): NodePatch {
  const patch: Record<string, string | null> = { [keys.state]: report.state, [keys.lastError]: report.lastError ?? null };
  if (keys.progress !== undefined) patch[keys.progress] = report.progress === undefined ? null : `${report.progress.done}/${report.progress.total}`;
  if (report.stateVersion !== undefined) patch[keys.stateVersion] = report.stateVersion;
  if (report.currentVersion !== undefined) patch[keys.currentVersion] = report.currentVersion;
  return { metadata: { annotations: patch } };
}

/** A version as a label value: label values allow [A-Za-z0-9_.-] only, so build metadata's "+" becomes "_". */
export function versionLabelValue(version: string): string {
  return version.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 63);
}

/** Label patches that make kubeos.io/version say what each node reports it runs (nothing when it already does). */
export function planVersionLabels(nodes: readonly NodeView[]): Array<{ node: string; patch: NodePatch }> {
  const patches: Array<{ node: string; patch: NodePatch }> = [];
  for (const node of nodes) {
    if (node.currentVersion === undefined) continue;
    const value = versionLabelValue(node.currentVersion);
    if (node.labels[versionLabel] !== value) patches.push({ node: node.name, patch: { metadata: { labels: { [versionLabel]: value } } } });
  }
  return patches;
}
