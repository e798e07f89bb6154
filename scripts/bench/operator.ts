/**
 * The operator's targets: a simulated 1,000-node rollout against its lower bound
 * ceil(N / maxUnavailable) x per-node time, and the planner's time per reconcile at 10,000 nodes
 * against a linear pass over the same cluster state (JSON.stringify) measured in the same run.
 */
import { performance } from 'node:perf_hooks';
import type { NodeView } from '../../runtime/fleet/node-protocol.js';
import type { OSUpgradeSpec, Rollout } from '../../runtime/fleet/osupgrade.js';
import { planRollout } from '../../runtime/operator/plan-rollout.js';
import { simulateRollout, type SimNode } from '../../runtime/operator/simulate-rollout.js';
import { row, type Bench, type BenchRow } from './measure.js';

const times = { drainSeconds: 30, installSeconds: 120, rebootSeconds: 60, commitSeconds: 5 };
const gateSeconds = 60;
const perNodeSeconds = times.drainSeconds + times.installSeconds + times.rebootSeconds + times.commitSeconds + gateSeconds;

function spec(maxUnavailable: number, failureBudget: number): OSUpgradeSpec {
  return {
    version: '2.0.0', channel: 'stable', maxUnavailable, nodeSelector: {}, maintenanceWindows: [],
    drain: { timeoutSeconds: 600, force: true, deleteEmptyDirData: true }, healthGate: { readySeconds: gateSeconds },
    failureBudget, nodeTimeoutSeconds: 1800, paused: false, allowDowngrade: false, onFailureBudget: 'pause',
  };
}

function fleet(count: number, jitter: (i: number) => number, failEvery: number): SimNode[] {
  return Array.from({ length: count }, (_, i) => {
    const f = jitter(i);
    return {
      name: `node-${String(i).padStart(5, '0')}`,
      labels: {},
      currentVersion: '1.0.0',
      behavior: {
        drainSeconds: times.drainSeconds * f, installSeconds: times.installSeconds * f, rebootSeconds: times.rebootSeconds * f, commitSeconds: times.commitSeconds,
        outcome: failEvery > 0 && i % failEvery === failEvery - 1 ? 'fell-back' : 'committed',
        pods: [{ namespace: 'apps', name: `web-${i}`, ownerKind: 'ReplicaSet', mirror: false, emptyDir: false, finished: false, terminating: false }],
      },
    };
  });
}

function simulate(name: string, nodes: SimNode[], maxUnavailable: number, failureBudget: number, meanPerNode: number): BenchRow {
  const started = performance.now();
  const result = simulateRollout({
    nodes, name: 'bench', spec: spec(maxUnavailable, failureBudget), startTime: Date.UTC(2025, 0, 1),
    reconcileDelayMs: 1000, maxDurationMs: 30 * 86_400_000,
  });
  const wall = (performance.now() - started) / 1000;
  if (!result.complete) throw new Error(`${name}: the simulated rollout did not complete (${JSON.stringify(result.status?.counts)})`);
  const bound = Math.ceil(nodes.length / maxUnavailable) * meanPerNode;
  return row(name, `ceil(${nodes.length}/${maxUnavailable}) x ${meanPerNode.toFixed(0)} s per node`, result.makespanMs / 1000, bound, 's',
    `simulated seconds; ${result.reconciles} reconciles in ${wall.toFixed(1)} s wall, ${result.status?.counts.failed ?? 0} failed`);
}

function midRollout(count: number): NodeView[] {
  const now = Date.UTC(2025, 0, 1);
  return Array.from({ length: count }, (_, i): NodeView => {
    const phase = i < count * 0.4 ? 'done' : i < count * 0.4 + 200 ? (['draining', 'upgrading', 'verifying'] as const)[i % 3]! : undefined;
    return {
      name: `node-${String(i).padStart(5, '0')}`, uid: undefined, progress: undefined, labels: { pool: 'workers' }, unschedulable: phase === 'draining' || phase === 'upgrading', ready: true,
      readySince: now - 3_600_000, desiredVersion: phase ? '2.0.0' : undefined, currentVersion: phase === 'done' || phase === 'verifying' ? '2.0.0' : '1.0.0',
      agentState: phase === 'upgrading' ? 'installing' : phase === 'verifying' ? 'committed' : 'idle', stateVersion: phase ? '2.0.0' : undefined, lastError: undefined,
      record: phase ? { rollout: 'bench', version: '2.0.0', phase, since: now - 10_000 } : undefined,
      ...(phase === 'draining' ? { pods: [{ namespace: 'apps', name: `web-${i}`, ownerKind: 'ReplicaSet', mirror: false, emptyDir: false, finished: false, terminating: false }] } : {}),
    };
  });
}

function perCall(fn: () => unknown, rounds: number): number {
  for (let i = 0; i < 5; i++) fn(); // warm up
  const start = performance.now();
  for (let i = 0; i < rounds; i++) fn();
  return (performance.now() - start) / rounds;
}

export const bench: Bench = async () => {
  const rows: BenchRow[] = [];
  rows.push(simulate('operator: 1,000-node rollout makespan, maxUnavailable 50', fleet(1000, () => 1, 0), 50, 1, perNodeSeconds));
  // per-node times uniform in [0.5, 1.5] x nominal, 1% of nodes fall back
  let seed = 42;
  const rand = () => ((seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648);
  rows.push(simulate('operator: 1,000-node rollout makespan, jittered times, 1% fall back', fleet(1000, () => 0.5 + rand(), 100), 50, 20, perNodeSeconds));

  const nodes = midRollout(10_000);
  const rollout: Rollout = { name: 'bench', generation: 1, spec: { ...spec(200, 50), nodeSelector: { pool: 'workers' } }, pausedBy: undefined, rolledBack: undefined, failuresAcknowledged: 0, previousStatus: undefined };
  const now = Date.UTC(2025, 0, 1);
  const plan = perCall(() => planRollout(rollout, { nodes }, now), 50);
  const baseline = perCall(() => JSON.stringify(nodes), 50);
  rows.push(row('operator: planner per reconcile at 10,000 nodes', 'JSON.stringify of the same 10,000 nodes', plan, baseline, 'ms', 'mid-rollout: 4,000 done, 200 in flight'));
  return rows;
};
