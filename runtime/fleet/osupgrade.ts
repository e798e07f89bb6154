/**
 * The OSUpgrade custom resource (kubeos.io/v1alpha1, cluster-scoped): its spec with defaults, its
 * status, and a parser that reports every invalid field at once with its path. The CRD schema in
 * deploy/crd-osupgrade.yaml mirrors these types; defaults live here only.
 */
import { versionPattern } from '../core/compare-versions.js';
import { KubeosError } from '../core/errors.js';
import type { NodePhase } from './node-protocol.js';

export const osUpgradeApi = { group: 'kubeos.io', version: 'v1alpha1', plural: 'osupgrades', kind: 'OSUpgrade' } as const;

/** Annotations the operator keeps on the OSUpgrade itself (written together with spec.paused). */
export const rolloutAnnotations = {
  pausedBy: 'kubeos.io/paused-by',
  failuresAcknowledged: 'kubeos.io/failures-acknowledged',
  /** Set when the operator (onFailureBudget: rollback) or `kubeos rollout undo` moved spec.version back: JSON {from, to}. */
  rolledBack: 'kubeos.io/rolled-back',
} as const;

/** The merge patch that moves a rollout back from `from` to `to` (the operator's rollback and `kubeos rollout undo`). */
export function rollBackPatch(from: string, to: string): Record<string, unknown> {
  return { metadata: { annotations: { [rolloutAnnotations.rolledBack]: JSON.stringify({ from, to }) } }, spec: { version: to, allowDowngrade: true, paused: false } };
}

export const failureBudgetActions = ['pause', 'rollback'] as const;
export type FailureBudgetAction = (typeof failureBudgetActions)[number];

export const weekdays = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'] as const;
export type Weekday = (typeof weekdays)[number];

export interface MaintenanceWindow {
  /** Days the window opens on (UTC). */
  days: Weekday[];
  /** "HH:MM" UTC; a window whose end is not after its start runs past midnight. */
  start: string;
  end: string;
}

export interface DrainSpec {
  timeoutSeconds: number;
  /** Evict pods no controller manages (they are not recreated elsewhere). */
  force: boolean;
  /** Evict pods with emptyDir volumes (their data is lost). */
  deleteEmptyDirData: boolean;
}

export interface OSUpgradeSpec {
  version: string;
  channel: string;
  /** A count, or a percentage of the selected nodes ("25%", rounded down, at least 1). */
  maxUnavailable: number | string;
  /** Label equality, like a Pod's nodeSelector; empty selects every node. */
  nodeSelector: Record<string, string>;
  /** Empty means always. Only starting a node is gated; nodes in flight finish. */
  maintenanceWindows: MaintenanceWindow[];
  drain: DrainSpec;
  healthGate: { readySeconds: number };
  /** Pause the rollout once this many nodes have failed (since the last resume). */
  failureBudget: number;
  /** A node that is not back, Ready on the new version, this long after it was told to upgrade has failed. */
  nodeTimeoutSeconds: number;
  paused: boolean;
  /** Let agents install a version older than the one they run (a fleet rollback); still only a signed release. */
  allowDowngrade: boolean;
  /** When the failure budget is spent: pause (a person decides), or roll the upgraded nodes back. */
  onFailureBudget: FailureBudgetAction;
}

export const rolloutPhases = ['Progressing', 'Waiting', 'Paused', 'Complete', 'Invalid'] as const;
export type RolloutPhase = (typeof rolloutPhases)[number];

/**
 * Ready, Reconciling and Stalled are the conditions kubectl wait, kstatus (Flux) and Argo CD read;
 * the others say more about a rollout. Each carries the generation it was computed for.
 */
export interface RolloutCondition {
  type: 'Ready' | 'Reconciling' | 'Stalled' | 'Progressing' | 'Paused' | 'Complete' | 'FailureBudgetExceeded' | 'Invalid';
  status: 'True' | 'False';
  reason: string;
  message: string;
  lastTransitionTime: string;
  observedGeneration: number;
}

export interface NodeResult {
  name: string;
  phase: NodePhase;
  agentState?: string;
  /** "45%" while the agent writes the standby slot. */
  progress?: string;
  currentVersion?: string;
  reason?: string;
  message?: string;
  since?: string;
}

export type PhaseCounts = Record<NodePhase, number> & { total: number };

export interface OSUpgradeStatus {
  observedGeneration: number;
  phase: RolloutPhase;
  targetVersion: string;
  maxUnavailable: number;
  counts: PhaseCounts;
  /** Nodes not pending, failed and in flight first; capped so the object stays small. */
  nodes: NodeResult[];
  nodesOmitted: number;
  conditions: RolloutCondition[];
}

export interface OSUpgradeObject {
  metadata?: { name?: string; uid?: string; generation?: number; annotations?: Record<string, string>; creationTimestamp?: Date | string };
  spec?: unknown;
  status?: Partial<OSUpgradeStatus>;
}

/** What the planner reads about a rollout: its validated spec and the operator's own marks. */
export interface Rollout {
  name: string;
  generation: number;
  spec: OSUpgradeSpec;
  /** Set when the operator itself paused the rollout. */
  pausedBy: 'failure-budget' | undefined;
  /** The rollback that set the current target, if one did: a rollout rolls back once per target. */
  rolledBack: { from: string; to: string } | undefined;
  /** Failures already accounted for by a resume, for this target version. */
  failuresAcknowledged: number;
  previousStatus: Partial<OSUpgradeStatus> | undefined;
  /** Cordon and drain a node before it is told to change (default true; an OSConfig drains only for a reboot). */
  drainFirst?: boolean;
  /** Reasons a node's failure is recorded with when its agent reports failed or fell-back (default UpgradeFailed, FellBack). */
  failureReasons?: { failed: string; fellBack: string };
}

const defaults = {
  channel: 'stable',
  maxUnavailable: 1,
  drain: { timeoutSeconds: 600, force: false, deleteEmptyDirData: false },
  healthGate: { readySeconds: 120 },
  failureBudget: 1,
  nodeTimeoutSeconds: 1800,
} as const;

const timePattern = /^([01]\d|2[0-3]):[0-5]\d$/;
const percentPattern = /^(100|[1-9]?\d)%$/;

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export interface Problem {
  path: string;
  expected: string;
  actual: unknown;
}

/** The fields every rollout kind has (OSUpgrade and OSConfig), with defaults applied. */
export type RolloutCommonSpec = Omit<OSUpgradeSpec, 'version' | 'channel' | 'allowDowngrade' | 'onFailureBudget'>;

/** Field readers that record a problem and return the fallback when a value is wrong. */
function fieldReaders(problems: Problem[]) {
  return {
    str: (path: string, value: unknown, fallback?: string): string => {
      if (value === undefined && fallback !== undefined) return fallback;
      if (typeof value === 'string' && value.length > 0) return value;
      problems.push({ path, expected: 'a non-empty string', actual: value });
      return '';
    },
    int: (path: string, value: unknown, fallback: number, min: number): number => {
      if (value === undefined) return fallback;
      if (typeof value === 'number' && Number.isInteger(value) && value >= min) return value;
      problems.push({ path, expected: `an integer >= ${min}`, actual: value });
      return fallback;
    },
    bool: (path: string, value: unknown, fallback: boolean): boolean => {
      if (value === undefined) return fallback;
      if (typeof value === 'boolean') return value;
      problems.push({ path, expected: 'true or false', actual: value });
      return fallback;
    },
  };
}

/** Validates the fields every rollout kind has, adding each problem to `problems`. */
export function parseRolloutCommon(spec: Record<string, unknown>, problems: Problem[]): RolloutCommonSpec {
  const { int, bool } = fieldReaders(problems);
  let maxUnavailable: number | string = defaults.maxUnavailable;
  const mu = spec['maxUnavailable'];
  if (mu !== undefined) {
    if (typeof mu === 'number' && Number.isInteger(mu) && mu >= 1) maxUnavailable = mu;
    else if (typeof mu === 'string' && percentPattern.test(mu) && mu !== '0%') maxUnavailable = mu;
    else problems.push({ path: 'spec.maxUnavailable', expected: 'an integer >= 1 or a percentage such as "25%"', actual: mu });
  }

  const nodeSelector: Record<string, string> = {};
  const sel = spec['nodeSelector'];
  if (sel !== undefined) {
    if (!isRecord(sel)) problems.push({ path: 'spec.nodeSelector', expected: 'a map of label to value', actual: sel });
    else for (const [k, v] of Object.entries(sel)) {
      if (typeof v === 'string') nodeSelector[k] = v;
      else problems.push({ path: `spec.nodeSelector.${k}`, expected: 'a string', actual: v });
    }
  }

  const maintenanceWindows: MaintenanceWindow[] = [];
  const wins = spec['maintenanceWindows'];
  if (wins !== undefined && !Array.isArray(wins)) problems.push({ path: 'spec.maintenanceWindows', expected: 'a list', actual: wins });
  for (const [i, w] of (Array.isArray(wins) ? wins : []).entries()) {
    const path = `spec.maintenanceWindows[${i}]`;
    if (!isRecord(w)) {
      problems.push({ path, expected: 'an object with days, start and end', actual: w });
      continue;
    }
    const days: Weekday[] = [];
    if (!Array.isArray(w['days']) || w['days'].length === 0) problems.push({ path: `${path}.days`, expected: `a non-empty list of ${weekdays.join('|')}`, actual: w['days'] });
    else for (const d of w['days']) {
      if ((weekdays as readonly unknown[]).includes(d)) days.push(d as Weekday);
      else problems.push({ path: `${path}.days`, expected: weekdays.join('|'), actual: d });
    }
    for (const key of ['start', 'end'] as const) {
      if (typeof w[key] !== 'string' || !timePattern.test(w[key])) problems.push({ path: `${path}.${key}`, expected: '"HH:MM" (UTC, 24-hour)', actual: w[key] });
    }
    maintenanceWindows.push({ days, start: String(w['start']), end: String(w['end']) });
  }

  const drainRaw = spec['drain'] ?? {};
  if (!isRecord(drainRaw)) problems.push({ path: 'spec.drain', expected: 'an object', actual: drainRaw });
  const drain = isRecord(drainRaw) ? drainRaw : {};
  const gateRaw = spec['healthGate'] ?? {};
  if (!isRecord(gateRaw)) problems.push({ path: 'spec.healthGate', expected: 'an object', actual: gateRaw });
  const gate = isRecord(gateRaw) ? gateRaw : {};

  return {
    maxUnavailable,
    nodeSelector,
    maintenanceWindows,
    drain: {
      timeoutSeconds: int('spec.drain.timeoutSeconds', drain['timeoutSeconds'], defaults.drain.timeoutSeconds, 1),
      force: bool('spec.drain.force', drain['force'], defaults.drain.force),
      deleteEmptyDirData: bool('spec.drain.deleteEmptyDirData', drain['deleteEmptyDirData'], defaults.drain.deleteEmptyDirData),
    },
    healthGate: { readySeconds: int('spec.healthGate.readySeconds', gate['readySeconds'], defaults.healthGate.readySeconds, 0) },
    failureBudget: int('spec.failureBudget', spec['failureBudget'], defaults.failureBudget, 1),
    nodeTimeoutSeconds: int('spec.nodeTimeoutSeconds', spec['nodeTimeoutSeconds'], defaults.nodeTimeoutSeconds, 1),
    paused: bool('spec.paused', spec['paused'], false),
  };
}

/** One line listing every problem: "spec.x: expected ..., got ...; ...". */
export function describeProblems(problems: readonly Problem[]): string {
  return problems.map((p) => `${p.path}: expected ${p.expected}, got ${JSON.stringify(p.actual)}`).join('; ');
}

/** Validates a raw spec, collecting every problem, then applies defaults. */
export function parseOSUpgradeSpec(raw: unknown, name = 'OSUpgrade'): OSUpgradeSpec {
  const problems: Problem[] = [];
  const spec = isRecord(raw) ? raw : {};
  if (!isRecord(raw)) problems.push({ path: 'spec', expected: 'an object', actual: raw });
  const { str, bool } = fieldReaders(problems);

  let version = str('spec.version', spec['version']);
  if (version !== '' && !versionPattern.test(version)) {
    problems.push({ path: 'spec.version', expected: 'a semantic version such as "1.4.0"', actual: version });
    version = '';
  }
  const channel = str('spec.channel', spec['channel'], defaults.channel);
  const result: OSUpgradeSpec = {
    version,
    channel,
    ...parseRolloutCommon(spec, problems),
    allowDowngrade: bool('spec.allowDowngrade', spec['allowDowngrade'], false),
    onFailureBudget: 'pause',
  };
  const onBudget = spec['onFailureBudget'];
  if (onBudget !== undefined) {
    if ((failureBudgetActions as readonly unknown[]).includes(onBudget)) result.onFailureBudget = onBudget as FailureBudgetAction;
    else problems.push({ path: 'spec.onFailureBudget', expected: failureBudgetActions.join(' or '), actual: onBudget });
  }

  if (problems.length > 0) {
    throw new KubeosError(
      'E_OSUPGRADE_INVALID',
      `${name}: ${describeProblems(problems)}`,
      { hint: 'fix the OSUpgrade spec (kubectl explain osupgrade.spec); the rollout does nothing until then', details: { problems } },
    );
  }
  return result;
}

/** Reads the rollout from an OSUpgrade object; throws E_OSUPGRADE_INVALID listing every problem. */
export function readRollout(object: OSUpgradeObject): Rollout {
  return rolloutFrom(object, parseOSUpgradeSpec(object.spec, object.metadata?.name ?? ''));
}

/** The rollout of an object whose spec is already read: the operator's marks come from its annotations. */
export function rolloutFrom(object: OSUpgradeObject, spec: OSUpgradeSpec): Rollout {
  const name = object.metadata?.name ?? '';
  const a = object.metadata?.annotations ?? {};
  let failuresAcknowledged = 0;
  try {
    const ack = JSON.parse(a[rolloutAnnotations.failuresAcknowledged] ?? 'null') as { version?: unknown; count?: unknown } | null;
    if (ack !== null && ack.version === spec.version && typeof ack.count === 'number') failuresAcknowledged = ack.count;
  } catch {
    // an unreadable mark acknowledges nothing
  }
  return {
    name,
    generation: object.metadata?.generation ?? 0,
    spec,
    pausedBy: a[rolloutAnnotations.pausedBy] === 'failure-budget' ? 'failure-budget' : undefined,
    rolledBack: readRolledBack(a[rolloutAnnotations.rolledBack], spec.version),
    failuresAcknowledged,
    previousStatus: object.status,
  };
}

/** The rollback mark, only while the target is still the version it rolled back to. */
function readRolledBack(value: string | undefined, version: string): { from: string; to: string } | undefined {
  try {
    const mark = JSON.parse(value ?? 'null') as { from?: unknown; to?: unknown } | null;
    if (mark !== null && typeof mark.from === 'string' && mark.to === version) return { from: mark.from, to: mark.to };
  } catch {
    // an unreadable mark marks nothing
  }
  return undefined;
}

/** maxUnavailable as a node count: percentages of the selected nodes round down, never below 1. */
export function resolveMaxUnavailable(value: number | string, selected: number): number {
  if (typeof value === 'number') return Math.max(1, value);
  const pct = Number.parseInt(value, 10);
  return Math.max(1, Math.floor((selected * pct) / 100));
}

export function matchesSelector(labels: Readonly<Record<string, string>>, selector: Readonly<Record<string, string>>): boolean {
  for (const [k, v] of Object.entries(selector)) if (labels[k] !== v) return false;
  return true;
}
