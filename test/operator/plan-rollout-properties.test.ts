/**
 * Property tests of the planner: 500 random clusters, each rolled out by the discrete-event
 * simulator, with the invariants checked at every reconcile against oracles written here.
 */
import test from 'ava';
import { inFlightPhases, type NodeRecord, type NodeView, type PodView } from '../../runtime/fleet/node-protocol.js';
import { weekdays, type MaintenanceWindow, type OSUpgradeSpec } from '../../runtime/fleet/osupgrade.js';
import { simulateRollout, type SimNode, type SimStep } from '../../runtime/operator/simulate-rollout.js';

/** mulberry32: small, seeded, good enough to pick clusters. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)),
    chance: (p: number) => next() < p,
    pick: <T>(xs: readonly T[]): T => xs[Math.floor(next() * xs.length)]!,
  };
}
type Rng = ReturnType<typeof prng>;

const hhmm = (m: number) => `${String(Math.floor(m / 60) % 24).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;

function randomPods(rng: Rng, node: string): PodView[] {
  const pods: PodView[] = [];
  for (let i = 0; i < rng.int(0, 4); i++) {
    const kind = rng.pick(['ReplicaSet', 'ReplicaSet', 'StatefulSet', 'DaemonSet', 'bare', 'mirror'] as const);
    pods.push({
      namespace: 'apps',
      name: `${node}-pod-${i}`,
      ownerKind: kind === 'bare' || kind === 'mirror' ? undefined : kind,
      mirror: kind === 'mirror',
      emptyDir: rng.chance(0.15),
      finished: rng.chance(0.05),
      terminating: false,
    });
  }
  return pods;
}

function randomCluster(seed: number): { nodes: SimNode[]; spec: OSUpgradeSpec; startTime: number; resyncMs: number } {
  const rng = prng(seed);
  const count = rng.int(1, 40);
  const nodes: SimNode[] = [];
  for (let i = 0; i < count; i++) {
    const name = `node-${String(i).padStart(3, '0')}`;
    nodes.push({
      name,
      labels: { role: rng.pick(['worker', 'worker', 'infra']), zone: rng.pick(['a', 'b', 'c']) },
      currentVersion: rng.chance(0.1) ? '2.0.0' : '1.0.0',
      ready: !rng.chance(0.03),
      unschedulable: rng.chance(0.03),
      behavior: {
        drainSeconds: rng.int(1, 60),
        installSeconds: rng.int(30, 300),
        rebootSeconds: rng.int(20, 120),
        commitSeconds: rng.int(1, 10),
        outcome: rng.pick(['committed', 'committed', 'committed', 'committed', 'committed', 'committed', 'committed', 'failed', 'fell-back', 'never-returns'] as const),
        evictionBlockedUntil: rng.chance(0.1) ? rng.int(0, 3) * 3_600_000 : undefined,
        pods: randomPods(rng, name),
      },
    });
  }
  const windows: MaintenanceWindow[] = [];
  if (rng.chance(0.5)) {
    for (let w = 0; w < rng.int(1, 2); w++) {
      const days = weekdays.filter(() => rng.chance(0.6));
      const start = rng.int(0, 23) * 60 + rng.pick([0, 30]);
      windows.push({ days: days.length > 0 ? days : ['Sat'], start: hhmm(start), end: hhmm(start + rng.int(2, 10) * 60) });
    }
  }
  const spec: OSUpgradeSpec = {
    version: '2.0.0',
    allowDowngrade: false,
    onFailureBudget: 'pause',
    channel: 'stable',
    maxUnavailable: rng.chance(0.5) ? rng.int(1, 5) : `${rng.pick([10, 25, 33, 50])}%`,
    nodeSelector: rng.pick<Record<string, string>>([{}, { role: 'worker' }, { zone: 'b' }, { role: 'infra', zone: 'a' }]),
    maintenanceWindows: windows,
    drain: { timeoutSeconds: rng.int(60, 900), force: rng.chance(0.5), deleteEmptyDirData: rng.chance(0.5) },
    healthGate: { readySeconds: rng.int(0, 300) },
    failureBudget: rng.int(1, 4),
    nodeTimeoutSeconds: rng.int(600, 1800),
    paused: rng.chance(0.1),
  };
  const startTime = Date.UTC(2024, 0, 1) + rng.int(0, 365 * 24 * 60) * 60_000;
  return { nodes, spec, startTime, resyncMs: rng.int(1, 6) * 3_600_000 };
}

/** Oracle for windows: enumerate the window's openings around now and test membership. */
function inWindowOracle(windows: readonly MaintenanceWindow[], now: number): boolean {
  if (windows.length === 0) return true;
  const day = 86_400_000;
  const toMin = (s: string) => Number(s.slice(0, 2)) * 60 + Number(s.slice(3, 5));
  return windows.some((w) => {
    const length = ((toMin(w.end) - toMin(w.start) + 1440) % 1440 || 1440) * 60_000;
    const midnight = Math.floor(now / day) * day;
    return [midnight - day, midnight].some((d) => {
      const open = d + toMin(w.start) * 60_000;
      return w.days.includes(weekdays[new Date(d).getUTCDay()]!) && now >= open && now < open + length;
    });
  });
}

const selects = (spec: OSUpgradeSpec, node: { labels: Readonly<Record<string, string>> }) =>
  Object.entries(spec.nodeSelector).every(([k, v]) => node.labels[k] === v);

function maxUnavailableOracle(spec: OSUpgradeSpec, selected: number): number {
  if (typeof spec.maxUnavailable === 'number') return spec.maxUnavailable;
  return Math.max(1, Math.floor((selected * Number.parseInt(spec.maxUnavailable, 10)) / 100));
}

interface After {
  record: NodeRecord | undefined;
  unschedulable: boolean;
  ready: boolean;
}

/** The nodes as they are once a step's actions have been applied. */
function afterStep(step: SimStep): Map<string, After> {
  const after = new Map<string, After>();
  for (const n of step.nodes) after.set(n.name, { record: n.record, unschedulable: n.unschedulable, ready: n.ready });
  for (const a of step.plan.actions) {
    if (!('node' in a)) continue;
    const n = after.get(a.node)!;
    if ('record' in a) n.record = a.record;
    if (a.type === 'cordon') n.unschedulable = true;
    if (a.type === 'uncordon' || (a.type === 'mark-failed' && a.uncordon)) n.unschedulable = false;
  }
  return after;
}

const clusters = 500;
const properties = ['maxUnavailable', 'selector', 'window', 'budget', 'resume', 'failed', 'liveness'] as const;
type Property = (typeof properties)[number];
const problems = new Map<Property, string[]>(properties.map((p) => [p, []]));
const summary = { completed: 0, overBudget: 0, failures: 0, resumes: 0, starts: 0 };

function check(property: Property, ok: boolean, what: () => string): void {
  const list = problems.get(property)!;
  if (!ok && list.length < 10) list.push(what());
}

function runCluster(seed: number): void {
  const { nodes, spec, startTime, resyncMs } = randomCluster(seed);
  const rng = prng(seed * 7919);
  const selected = nodes.filter((n) => selects(spec, n));
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const maxU = maxUnavailableOracle(spec, selected.length);
  const failedOnce = new Set<string>();
  const at = (now: number) => `seed ${seed} at ${new Date(now).toISOString()}`;
  const isOurs = (s: After) => s.record?.rollout === 'fleet' && inFlightPhases.includes(s.record.phase);

  const result = simulateRollout({
    nodes,
    name: 'fleet',
    spec,
    startTime,
    reconcileDelayMs: 1000,
    resyncMs,
    maxDurationMs: 120 * 86_400_000,
    onStep: (step) => {
      const { plan, now } = step;
      const after = afterStep(step);
      const cordons = plan.actions.filter((a) => a.type === 'cordon');
      summary.starts += cordons.length;
      const inFlight = [...after.values()].filter(isOurs).length;
      check('maxUnavailable', inFlight <= maxU, () => `${at(now)}: ${inFlight} nodes in flight, maxUnavailable ${maxU}`);
      check('maxUnavailable', plan.status.maxUnavailable === maxU, () => `${at(now)}: status.maxUnavailable ${plan.status.maxUnavailable}, expected ${maxU}`);
      for (const a of plan.actions) {
        if ('node' in a) check('selector', selects(spec, byName.get(a.node)!), () => `${at(now)}: ${a.type} on unselected node ${a.node}`);
      }
      const down = selected.filter((n) => {
        const s = after.get(n.name)!;
        return s.unschedulable || !s.ready || isOurs(s);
      }).length;
      const inWindow = inWindowOracle(spec.maintenanceWindows, now);
      if (cordons.length > 0) {
        check('maxUnavailable', down <= maxU, () => `${at(now)}: started nodes with ${down} selected nodes unavailable, maxUnavailable ${maxU}`);
        check('window', inWindow, () => `${at(now)}: started a node outside every window`);
        check('budget', !step.rollout.spec.paused, () => `${at(now)}: started a node while paused`);
        for (const c of cordons) check('failed', !failedOnce.has(c.node), () => `${at(now)}: restarted failed node ${c.node}`);
      }
      const failedNow = [...after.values()].filter((n) => n.record?.rollout === 'fleet' && n.record.version === '2.0.0' && n.record.phase === 'failed').length;
      const resuming = step.rollout.pausedBy === 'failure-budget' && !step.rollout.spec.paused;
      if (resuming) summary.resumes++;
      const acknowledged = resuming ? failedNow : step.rollout.failuresAcknowledged;
      const budgetSpent = failedNow - acknowledged >= spec.failureBudget;
      if (budgetSpent) {
        check('budget', cordons.length === 0, () => `${at(now)}: started nodes with ${failedNow} failures, budget ${spec.failureBudget}`);
        check('budget', step.rollout.spec.paused || plan.actions.some((a) => a.type === 'pause-rollout'), () => `${at(now)}: failure budget spent but the rollout was not paused`);
      }
      // Work-conserving: unpaused, in a window, within budget and with room, it starts all it may.
      const candidates = selected.filter((n) => {
        const s = after.get(n.name)!;
        return s.record === undefined && n.currentVersion !== spec.version && s.ready && !s.unschedulable;
      }).length + cordons.length;
      const canStart = !step.rollout.spec.paused && !budgetSpent && inWindow;
      const expected = canStart ? Math.max(0, Math.min(candidates, maxU - (down - cordons.length))) : 0;
      check(resuming ? 'resume' : 'liveness', cordons.length === expected, () => `${at(now)}: started ${cordons.length} nodes, expected ${expected} (${candidates} candidates, ${down - cordons.length} down, maxUnavailable ${maxU})`);
      for (const [name, n] of after) if (n.record?.phase === 'failed') failedOnce.add(name);
      // a person resumes a paused rollout sooner or later
      if (step.rollout.spec.paused && rng.chance(0.3)) return { paused: false };
      return undefined;
    },
  });

  for (const [name, starts] of result.upgradeStarts) check('failed', starts === 1, () => `seed ${seed}: ${name} told to upgrade ${starts} times`);
  const final = new Map<string, NodeView>(result.nodes.map((n) => [n.name, n]));
  for (const n of selected) {
    const view = final.get(n.name)!;
    const rec = view.record;
    check('liveness', rec === undefined || !inFlightPhases.includes(rec.phase), () => `seed ${seed}: ${n.name} left in flight (${rec?.phase})`);
    if (result.upgradeStarts.has(n.name) && n.behavior.outcome !== 'committed') {
      check('failed', rec?.phase === 'failed', () => `seed ${seed}: ${n.name} (${n.behavior.outcome}) ended ${rec?.phase}, not failed`);
      check('failed', view.desiredVersion === undefined, () => `seed ${seed}: ${n.name} failed but still has a desired version`);
    }
  }
  if (result.complete) summary.completed++;
  else {
    // Not complete only when going on is unsafe: every pending node is unavailable, or nodes that
    // are down (failed and never back, or down from the start) use up maxUnavailable.
    const unavailable = (name: string) => !final.get(name)!.ready || final.get(name)!.unschedulable;
    const pending = selected.filter((n) => final.get(n.name)!.record === undefined && final.get(n.name)!.currentVersion !== spec.version);
    const down = selected.filter((n) => unavailable(n.name)).length;
    check('liveness', pending.every((n) => unavailable(n.name)) || down >= maxU,
      () => `seed ${seed}: stalled with ${pending.length} pending nodes, ${down} down, maxUnavailable ${maxU}`);
  }
  if (result.status?.conditions.some((c) => c.type === 'FailureBudgetExceeded' && c.status === 'True')) summary.overBudget++;
  summary.failures += result.status?.counts.failed ?? 0;
}

test.before(() => {
  for (let seed = 1; seed <= clusters; seed++) runCluster(seed);
});

const titles: Record<Property, string> = {
  maxUnavailable: 'never more than maxUnavailable nodes are cordoned or upgrading at once',
  selector: 'only nodes the selector picks are touched',
  window: 'no node is started outside a maintenance window',
  budget: 'the rollout pauses once the failure budget is spent and starts nothing while paused',
  resume: 'a rollout paused by its failure budget resumes when unpaused',
  failed: 'a node that failed or fell back is marked failed and never retried',
  liveness: 'the planner starts every node it may and leaves none in flight',
};

for (const property of properties) {
  test(`over ${clusters} random clusters, ${titles[property]}`, (t) => {
    t.deepEqual(problems.get(property), []);
    if (property === 'liveness') t.log(`${summary.completed}/${clusters} completed, ${summary.overBudget} over budget at the end, ${summary.failures} node failures, ${summary.starts} starts`);
    if (property === 'resume') t.true(summary.resumes > 20, `only ${summary.resumes} resumes exercised`);
  });
}
