/**
 * The operator and the node agents against a REAL API server (etcd, kube-apiserver and
 * kube-controller-manager of the pinned release), installed with `kubectl apply -k deploy/` and
 * acting with the service-account credentials that deploy/ grants. One control plane per file; the
 * tests run one at a time on it and each removes its fleet afterwards.
 *
 * What is not real: the disk work of an upgrade (each agent runs a stand-in that takes a moment)
 * and the kubelet (a stand-in flips Node Ready during the "reboot").
 */
import anyTest, { type TestFn } from 'ava';
import { EventEmitter, setMaxListeners } from 'node:events';
import { createInterface } from 'node:readline';
import { execa } from 'execa';
import { setTimeout as sleep } from 'node:timers/promises';
import { KubeApi } from '../../runtime/fleet/kube-api.js';
import { annotations, decodeRecord } from '../../runtime/fleet/node-protocol.js';
import { reconcileRollout } from '../../runtime/operator/reconcile-rollout.js';
import { runNodeAgent, type NodeAgentEvent, type UpgradeOutcome, type UpgradeProgress } from '../../runtime/agent/run-node-agent.js';
import { runOperator, type OperatorEvent } from '../../runtime/operator/run-operator.js';
import { cliPath, jsonError, kubeos as runCli } from '../helpers/cli.js';
import { FaultProxy } from '../helpers/fault-proxy.js';
import { OperatorCluster, systemNamespace } from './cluster-fixture.js';

const test = anyTest as TestFn<unknown>;
let cluster: OperatorCluster;

test.before(async () => {
  cluster = await OperatorCluster.start();
});
test.after.always(async () => {
  await cluster?.stop();
});
test.afterEach.always(async () => {
  await cluster.reset();
});

type Behavior = 'ok' | 'never-returns' | 'fell-back';

const baseSpec = {
  version: '2.0.0',
  channel: 'beta',
  maxUnavailable: 1,
  healthGate: { readySeconds: 0 },
  drain: { timeoutSeconds: 30, force: true, deleteEmptyDirData: true },
  nodeTimeoutSeconds: 30,
  failureBudget: 1,
};

interface Harness {
  upgrades: string[];
  /** Upgrades the operator allowed to go to an older version. */
  downgrades: string[];
  operatorEvents: OperatorEvent[];
  /** 'change' on every operator event, so waits can depend on them too. */
  operatorActivity: EventEmitter;
  agentEvents: Array<NodeAgentEvent & { node: string }>;
  agentActivity: EventEmitter;
  startOperator: (identity: string, extra?: { releaseOnExit?: boolean; kubeconfig?: string }) => { abort: AbortController; done: Promise<void> };
}

/** Nodes with agents (each with a token bound to its own pod on its node), and an OSUpgrade named fleet. */
async function harness(t: { teardown: (fn: () => Promise<void> | void) => void }, nodes: Record<string, Behavior>, spec: Record<string, unknown> = baseSpec, upgradeMs = 40): Promise<Harness> {
  const stop = new AbortController();
  setMaxListeners(100, stop.signal);
  const upgrades: string[] = [];
  const downgrades: string[] = [];
  const operatorEvents: OperatorEvent[] = [];
  const operatorActivity = new EventEmitter();
  const agentEvents: Harness['agentEvents'] = [];
  const agentActivity = new EventEmitter();
  const running: Promise<void>[] = [];
  for (const [name, behavior] of Object.entries(nodes)) {
    await cluster.addNode(name, { 'kubeos.io/managed': 'true' });
    const kubeconfig = await cluster.addAgent(name);
    const upgrade = async (version: string, channel: string, progress: UpgradeProgress, _signal: AbortSignal, options: { allowDowngrade: boolean }): Promise<UpgradeOutcome> => {
      upgrades.push(`${name}:${version}:${channel}`);
      if (options.allowDowngrade) downgrades.push(`${name}:${version}`);
      await progress('installing');
      await sleep(upgradeMs); // the stand-in for writing the slot
      await progress('rebooting');
      await cluster.setNodeReady(name, false); // the kubelet goes away with the reboot
      await sleep(upgradeMs); // the stand-in for the reboot
      if (behavior === 'never-returns') return { state: 'rebooting' };
      await cluster.setNodeReady(name, true);
      if (behavior === 'fell-back') return { state: 'fell-back', currentVersion: '1.0.0', error: 'trial boot of 2.0.0 failed; back on 1.0.0' };
      return { state: 'committed', currentVersion: version };
    };
    running.push(runNodeAgent({
      api: KubeApi.connect({ kubeconfig }, `kubeos-agent/${name}`),
      nodeName: name,
      status: async () => ({ currentVersion: '1.0.0' }),
      upgrade,
      signal: stop.signal,
      resyncMs: 200,
      onEvent: (e) => {
        agentEvents.push({ ...e, node: name });
        agentActivity.emit('change');
      },
    }));
  }
  await cluster.addOSUpgrade('fleet', spec);

  const startOperator = (identity: string, extra: { releaseOnExit?: boolean; kubeconfig?: string } = {}) => {
    const abort = new AbortController();
    stop.signal.addEventListener('abort', () => abort.abort());
    const done = runOperator({
      api: KubeApi.connect({ kubeconfig: extra.kubeconfig ?? cluster.operatorKubeconfig }, identity),
      namespace: systemNamespace,
      leaseName: 'kubeos-operator',
      identity,
      intervalMs: 100,
      leaseDurationSeconds: 1,
      debounceMs: 10,
      signal: abort.signal,
      onEvent: (e) => {
        operatorEvents.push(e);
        operatorActivity.emit('change');
      },
      ...(extra.releaseOnExit === undefined ? {} : { releaseOnExit: extra.releaseOnExit }),
    });
    running.push(done);
    return { abort, done };
  };

  t.teardown(async () => {
    stop.abort();
    await Promise.allSettled(running);
  });
  return { upgrades, downgrades, operatorEvents, operatorActivity, agentEvents, agentActivity, startOperator };
}

const record = (node: string) => decodeRecord(cluster.mirror.annotations(node)[annotations.rollout]);
// the mirror may not have seen the OSUpgrade yet right after it was created
const status = () => cluster.mirror.get('osupgrades', 'fleet')?.['status'] ?? {};
const waitFor = (what: string, predicate: () => boolean, timeoutMs?: number, extra?: EventEmitter) => cluster.mirror.waitFor(what, predicate, timeoutMs, extra);
const reasons = (name?: string) => new Set(cluster.mirror.events(name).map((e) => e['reason']));

const auditEntries = () => cluster.audit();

test.serial('a rollout drains, upgrades and uncordons every node through the node agents', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok' });
  await cluster.addPod('apps', 'web-1', 'node-a', { ownerKind: 'ReplicaSet' });
  await cluster.addPod('apps', 'scratch', 'node-a', { ownerKind: 'ReplicaSet', emptyDir: true });
  await cluster.addPod('infra', 'fluentd', 'node-a', { ownerKind: 'DaemonSet' });
  await cluster.addPod('infra', 'etcd-node-a', 'node-a', { mirror: true });
  h.startOperator('op-1');
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);

  t.deepEqual(h.upgrades.sort(), ['node-a:2.0.0:beta', 'node-b:2.0.0:beta', 'node-c:2.0.0:beta']);
  for (const node of ['node-a', 'node-b', 'node-c']) {
    const a = cluster.mirror.annotations(node);
    t.is(a[annotations.currentVersion], '2.0.0');
    t.is(a[annotations.state], 'committed');
    t.is(record(node)?.phase, 'done');
    t.not(cluster.mirror.node(node)['spec'].unschedulable, true, `${node} left cordoned`);
  }
  // DaemonSet and mirror pods are left alone; the rest went through the Eviction API
  const left = cluster.mirror.list('pods').filter((p) => ['apps', 'infra'].includes(p['metadata'].namespace)).map((p) => `${p['metadata'].namespace}/${p['metadata'].name}`);
  t.deepEqual(left.sort(), ['infra/etcd-node-a', 'infra/fluentd']);
  const evictions = (await auditEntries())
    .filter((e) => e['objectRef']?.subresource === 'eviction' && e['verb'] === 'create' && e['stage'] === 'ResponseComplete' && e['responseStatus']?.code === 201)
    .map((e) => `${e['objectRef'].namespace}/${e['objectRef'].name} by ${e['user'].username}`);
  t.deepEqual(evictions.sort(), ['apps/scratch by system:serviceaccount:kubeos-system:kubeos-operator', 'apps/web-1 by system:serviceaccount:kubeos-system:kubeos-operator']);
  const s = status();
  t.like(s, { observedGeneration: 1, targetVersion: '2.0.0', counts: { total: 3, done: 3, failed: 0, pending: 0 } });
  t.true(s.conditions.some((c: { type: string; status: string }) => c.type === 'Complete' && c.status === 'True'));
  for (const reason of ['KubeosDraining', 'KubeosUpgradeRequested', 'KubeosUpgraded', 'KubeosUpgradeDone']) t.true(reasons('node-a').has(reason), reason);

  // what kubectl users see: the Ready condition, the events on the node, the version label
  const wait = await cluster.plane.kubectl(['wait', '--for=condition=Ready', '--timeout=30s', 'osupgrade/fleet']);
  t.is(wait.exitCode, 0, wait.stderr);
  t.like(s.conditions.find((c: { type: string }) => c.type === 'Ready'), { status: 'True', reason: 'AllNodesUpgraded', observedGeneration: 1 });
  t.like(s.conditions.find((c: { type: string }) => c.type === 'Stalled'), { status: 'False' });
  const described = await cluster.plane.kubectlOk(['describe', 'node', 'node-a']);
  for (const reason of ['KubeosDraining', 'KubeosUpgradeRequested', 'KubeosUpgraded', 'KubeosUpgradeDone']) t.regex(described, new RegExp(`Normal\\s+${reason}\\s`), reason);
  await waitFor('the version labels', () => ['node-a', 'node-b', 'node-c'].every((n) => cluster.mirror.node(n)['metadata'].labels?.['kubeos.io/version'] === '2.0.0'));
  t.regex(await cluster.plane.kubectlOk(['get', 'nodes', '-L', 'kubeos.io/version']), /^node-a\s.*\s2\.0\.0$/m);
});

test.serial('an eviction refused by a real PodDisruptionBudget is retried until the budget allows it', async (t) => {
  const h = await harness(t, { 'node-a': 'ok' });
  await cluster.addPod('db', 'postgres-0', 'node-a', { ownerKind: 'StatefulSet' });
  await cluster.plane.kubectlOk(['create', 'poddisruptionbudget', 'postgres', '-n', 'db', '--selector=app=postgres-0', '--min-available=1']);
  // the disruption controller (kube-controller-manager) computes the budget: none to spare
  await waitFor('the PDB status', () => cluster.mirror.get('pdbs', 'db/postgres')?.['status']?.currentHealthy === 1);
  h.startOperator('op-1');
  const blockedReports = () => h.operatorEvents.flatMap((e) => (e.type === 'reconciled' ? e.reports.flatMap((r) => r.blocked) : []));
  await waitFor('three refused evictions', () => blockedReports().length >= 3, 30_000, h.operatorActivity);

  t.is(record('node-a')?.phase, 'draining');
  t.true(cluster.mirror.node('node-a')['spec'].unschedulable);
  t.deepEqual(h.upgrades, [], 'no upgrade while a pod is still on the node');
  t.regex(blockedReports()[0]!.message, /^PodDisruptionBudget db\/postgres needs 1 healthy pods/);
  const blocked = cluster.mirror.events('node-a').filter((e) => e['reason'] === 'KubeosEvictionBlocked');
  t.is(blocked.length, 1, 'one Event per blocked pod, not one per retry');
  t.is(blocked[0]?.['type'], 'Warning');
  const refused = (await auditEntries()).filter((e) => e['objectRef']?.subresource === 'eviction' && e['stage'] === 'ResponseComplete' && e['responseStatus']?.code === 429);
  t.true(refused.length >= 3, 'the API server answered 429');

  await cluster.plane.kubectlOk(['delete', 'pdb', '-n', 'db', 'postgres']); // the budget goes away
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);
  t.deepEqual(h.upgrades, ['node-a:2.0.0:beta']);
  t.is(cluster.mirror.get('pods', 'db/postgres-0'), undefined);
});

test.serial('a drain held by a PodDisruptionBudget past its timeout fails the node, naming the budget and the pod', async (t) => {
  const h = await harness(t, { 'node-a': 'ok' }, { ...baseSpec, drain: { ...baseSpec.drain, timeoutSeconds: 3 }, failureBudget: 1 });
  await cluster.addPod('db', 'postgres-0', 'node-a', { ownerKind: 'StatefulSet' });
  await cluster.plane.kubectlOk(['create', 'poddisruptionbudget', 'postgres', '-n', 'db', '--selector=app=postgres-0', '--min-available=1']);
  await waitFor('the PDB status', () => cluster.mirror.get('pdbs', 'db/postgres')?.['status']?.currentHealthy === 1);
  h.startOperator('op-1');
  await waitFor('the blocking budget on the node record', () => /PodDisruptionBudget db\/postgres/.test(record('node-a')?.message ?? ''), 30_000);
  t.is(record('node-a')?.phase, 'draining');
  await waitFor('node-a to fail', () => record('node-a')?.phase === 'failed', 30_000);
  const failed = record('node-a')!;
  t.is(failed.reason, 'DrainTimeout');
  t.regex(failed.message ?? '', /db\/postgres-0/);
  t.regex(failed.message ?? '', /PodDisruptionBudget db\/postgres needs 1 healthy pods/);
  t.not(cluster.mirror.node('node-a')['spec'].unschedulable, true, 'a node whose drain failed is uncordoned');
  t.deepEqual(h.upgrades, [], 'never upgraded');
  await waitFor('the status to show it', () => status().nodes?.some((n: { name: string; reason?: string }) => n.name === 'node-a' && n.reason === 'DrainTimeout') === true);
  t.pass();
});

test.serial('a node that never comes back is marked failed and the failure budget pauses the rollout', async (t) => {
  const nodes = { 'node-a': 'never-returns', 'node-b': 'ok', 'node-c': 'ok', 'node-d': 'ok', 'node-e': 'ok', 'node-f': 'ok' } as const;
  const h = await harness(t, nodes, { ...baseSpec, nodeTimeoutSeconds: 3, maxUnavailable: 2 }, 400);
  h.startOperator('op-1');
  await waitFor('node-a to fail', () => record('node-a')?.phase === 'failed', 30_000);
  await waitFor('the rollout to pause', () => cluster.osupgrade('fleet')['spec'].paused === true);
  await waitFor('the status to say so', () => status().phase === 'Paused');

  t.like(record('node-a'), { phase: 'failed', reason: 'NodeTimeout' });
  t.is(cluster.mirror.annotations('node-a')[annotations.desiredVersion], undefined, 'desired version withdrawn');
  t.true(cluster.mirror.node('node-a')['spec'].unschedulable, 'a node that is not back stays cordoned');
  t.like(status(), { counts: { failed: 1 } });
  t.true(status().counts.pending >= 1);
  t.true(status().conditions.some((c: { type: string; status: string }) => c.type === 'FailureBudgetExceeded' && c.status === 'True'));
  await waitFor('the events', () => reasons('fleet').has('FailureBudgetExceeded') && reasons('node-a').has('KubeosUpgradeNodeTimeout'));
  t.regex(await cluster.plane.kubectlOk(['describe', 'osupgrade', 'fleet']), /Warning\s+FailureBudgetExceeded\s/);
  t.like(status().conditions.find((c: { type: string }) => c.type === 'Stalled'), { status: 'True', reason: 'FailureBudgetExceeded' });
  t.like(status().conditions.find((c: { type: string }) => c.type === 'Ready'), { status: 'False' });
  const startedWhenPaused = h.upgrades.length;
  const reconciled = () => h.operatorEvents.filter((e) => e.type === 'reconciled').length;
  const before = reconciled();
  await waitFor('five more reconciles', () => reconciled() >= before + 5, 30_000, h.operatorActivity);
  t.is(h.upgrades.length, startedWhenPaused, 'nothing started while paused');
  t.false(h.upgrades.includes('node-f:2.0.0:beta'));

  await cluster.patchOSUpgrade('fleet', { spec: { paused: false } }); // a person resumes
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);
  t.deepEqual(h.upgrades.sort(), Object.keys(nodes).map((n) => `${n}:2.0.0:beta`), 'the failed node is not retried');
  t.like(status(), { counts: { failed: 1, done: 5 } });
  await waitFor('the Resumed event', () => reasons('fleet').has('Resumed'));
  t.pass();
});

test.serial('a node that fell back is marked failed and its agent does not retry', async (t) => {
  const h = await harness(t, { 'node-a': 'fell-back' }, { ...baseSpec, failureBudget: 2 });
  h.startOperator('op-1');
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);
  t.like(record('node-a'), { phase: 'failed', reason: 'FellBack' });
  t.is(cluster.mirror.annotations('node-a')[annotations.state], 'fell-back');
  t.not(cluster.mirror.node('node-a')['spec'].unschedulable, true, 'a node back on its old version is uncordoned');
  // a person puts the version back by hand: the agent must not loop on it
  const seen = h.agentEvents.length;
  await cluster.patchNode('node-a', { metadata: { annotations: { [annotations.desiredVersion]: '2.0.0' } } });
  const declined = () => h.agentEvents.slice(seen).filter((e) => e.type === 'idle' && e.desiredVersion === '2.0.0' && /ended fell-back/.test(e.why)).length;
  await waitFor('the agent to look at the version twice and decline', () => declined() >= 2, 30_000, h.agentActivity);
  t.deepEqual(h.upgrades, ['node-a:2.0.0:beta']);
});

test.serial('an operator restarted mid-rollout resumes from the cluster, not from memory', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok', 'node-d': 'ok' }, baseSpec, 150);
  const first = h.startOperator('op-1', { releaseOnExit: false });
  const names = ['node-a', 'node-b', 'node-c', 'node-d'];
  await waitFor('the first node to be done', () => names.some((n) => record(n)?.phase === 'done'), 60_000);
  await waitFor('another node in flight', () => names.some((n) => ['draining', 'upgrading', 'verifying'].includes(record(n)?.phase ?? '')), 60_000);
  first.abort.abort(); // a crash: the lease is not released
  await first.done;

  h.startOperator('op-2');
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);
  t.deepEqual(h.upgrades.sort(), names.map((n) => `${n}:2.0.0:beta`), 'every node upgraded exactly once');
  const lease = cluster.mirror.get('leases', `${systemNamespace}/kubeos-operator`)!;
  t.is(lease['spec'].holderIdentity, 'op-2');
  t.is(lease['spec'].leaseTransitions, 1);
  t.true(names.some((n) => cluster.managers(n).includes('op-2')), 'the new replica did the rest');
});

test.serial('two replicas on one Lease never act at once', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok' });
  h.startOperator('op-1');
  h.startOperator('op-2');
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);
  const writers = new Set(['node-a', 'node-b', 'node-c'].flatMap((n) => cluster.managers(n)).filter((m) => m.startsWith('op-')));
  t.is(writers.size, 1, `writes from ${[...writers].join(', ')}`);
  t.true(h.operatorEvents.some((e) => e.type === 'leading'));
});

/** `kubeos operator run --json` as a subprocess, its JSON log lines collected as they come. */
function operatorProcess(identity: string) {
  const lines: Array<Record<string, any>> = [];
  const activity = new EventEmitter();
  const child = execa('node', [cliPath, 'operator', 'run', '--kubeconfig', cluster.operatorKubeconfig, '--namespace', systemNamespace, '--identity', identity,
    '--lease-duration', '2', '--interval', '0.2', '--metrics-address', '127.0.0.1:0', '--json'], { reject: false, buffer: false, timeout: 180_000 });
  createInterface({ input: child.stdout! }).on('line', (line) => {
    try {
      lines.push(JSON.parse(line) as Record<string, any>);
      activity.emit('change');
    } catch {
      // not a log line
    }
  });
  return { child, lines, activity, identity, url: () => lines.find((l) => l['type'] === 'serving')?.['url'] as string | undefined, leading: () => lines.some((l) => l['type'] === 'leading') };
}

const httpGet = async (url: string) => {
  const response = await fetch(url);
  return { status: response.status, text: await response.text() };
};

test.serial('two operator processes on one Lease: one acts, SIGKILL hands over within the lease duration, nothing is done twice', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok', 'node-d': 'ok' }, baseSpec, 300);
  const both = new EventEmitter();
  const ops = [operatorProcess('op-1'), operatorProcess('op-2')];
  for (const op of ops) op.activity.on('change', () => both.emit('change'));
  t.teardown(() => {
    for (const op of ops) op.child.kill('SIGKILL');
  });
  await waitFor('one operator to lead', () => ops.some((op) => op.leading()), 30_000, both);
  const leader = ops.find((op) => op.leading())!;
  const follower = ops.find((op) => op !== leader)!;
  // a replica is ready once it has heard from the API server: it says so by leading or following
  await waitFor('both to have read the lease', () => ops.every((op) => op.url() !== undefined && op.lines.some((l) => ['leading', 'following'].includes(l['type']))), 30_000, both);
  t.is(follower.lines.find((l) => l['type'] === 'following')?.['holder'], leader.identity);
  for (const op of ops) t.is((await httpGet(`${op.url()!}/readyz`)).status, 200, `${op.identity} ready`);
  t.is((await httpGet(`${leader.url()!}/healthz`)).status, 200);
  t.regex((await httpGet(`${leader.url()!}/metrics`)).text, new RegExp(`^kubeos_operator_leader\\{identity="${leader.identity}"\\} 1$`, 'm'));
  t.regex((await httpGet(`${follower.url()!}/metrics`)).text, new RegExp(`^kubeos_operator_leader\\{identity="${follower.identity}"\\} 0$`, 'm'));

  const names = ['node-a', 'node-b', 'node-c', 'node-d'];
  await waitFor('the first node to be done', () => names.some((n) => record(n)?.phase === 'done'), 60_000);
  t.false(follower.leading(), 'the follower did not act while the leader lived');
  t.false(names.some((n) => cluster.managers(n).includes(follower.identity)), 'no write from the follower');
  const killedAt = Date.now();
  leader.child.kill('SIGKILL'); // a crash: the lease is not released
  await waitFor('the follower to take over', () => follower.leading(), 30_000, both);
  const handover = Date.now() - killedAt;
  t.log(`handover after ${handover} ms (lease duration 2000 ms)`);
  t.true(handover <= 2000 + 1000, `handover took ${handover} ms`);

  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);
  t.deepEqual(h.upgrades.sort(), names.map((n) => `${n}:2.0.0:beta`), 'every node upgraded exactly once');
  // the status can be written before that reconcile's metrics are: the metrics are set before its log line
  const allDone = (l: Record<string, any>) => l['type'] === 'reconciled' && (l['reports'] as Array<Record<string, any>>).some((r) => r['plan']?.['status']?.['counts']?.['done'] === 4);
  await waitFor('the follower to log a reconcile with every node done', () => follower.lines.some(allDone), 30_000, both);
  const metrics = (await httpGet(`${follower.url()!}/metrics`)).text;
  t.regex(metrics, /^kubeos_rollout_nodes\{rollout="fleet",phase="done"\} 4$/m);
  t.regex(metrics, /^kubeos_reconcile_duration_seconds_count \d+$/m);
});

test.serial('an OSUpgrade deleted while a node is in flight releases the node: uncordoned, desired version withdrawn, failed as RolloutDeleted', async (t) => {
  const h = await harness(t, { 'node-a': 'ok' }, baseSpec, 5000);
  h.startOperator('op-1');
  await waitFor('node-a upgrading', () => record('node-a')?.phase === 'upgrading', 30_000);
  t.true(cluster.mirror.node('node-a')['spec'].unschedulable);
  await cluster.custom.deleteClusterCustomObject({ group: 'kubeos.io', version: 'v1alpha1', plural: 'osupgrades', name: 'fleet' });
  await waitFor('node-a released', () => record('node-a')?.phase === 'failed', 30_000);
  t.like(record('node-a'), { rollout: 'fleet', reason: 'RolloutDeleted', message: 'OSUpgrade fleet was deleted while this node was upgrading; released' });
  t.not(cluster.mirror.node('node-a')['spec'].unschedulable, true, 'uncordoned');
  t.is(cluster.mirror.annotations('node-a')[annotations.desiredVersion], undefined, 'the desired version is withdrawn');
  await waitFor('the KubeosRolloutDeleted event', () => reasons('node-a').has('KubeosRolloutDeleted'));
});

test.serial('a failed API call is reported as E_KUBERNETES and retried on the next reconcile', async (t) => {
  const proxy = new FaultProxy(cluster.plane);
  await proxy.start();
  t.teardown(() => proxy.stop());
  const viaProxy = await cluster.operatorKubeconfigVia(proxy.url);
  const h = await harness(t, { 'node-a': 'ok' });
  proxy.faults.push({ method: 'PATCH', path: /^\/api\/v1\/nodes\/node-a$/, status: 500, times: 1, fieldManager: 'op-1' });
  h.startOperator('op-1', { kubeconfig: viaProxy });
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);
  t.is(proxy.injected.length, 1);
  const errors = h.operatorEvents.flatMap((e) => (e.type === 'reconciled' ? e.reports.flatMap((r) => r.errors) : []));
  t.true(errors.length >= 1);
  t.is(errors[0]?.code, 'E_KUBERNETES');
  t.like(errors[0]?.details, { status: 500 });
});

test.serial('an operator whose watches drop opens them again and still acts on the next change', async (t) => {
  const proxy = new FaultProxy(cluster.plane);
  await proxy.start();
  t.teardown(() => proxy.stop());
  const viaProxy = await cluster.operatorKubeconfigVia(proxy.url);
  const h = await harness(t, { 'node-a': 'ok' });
  await cluster.patchNode('node-a', { spec: { unschedulable: true } }); // a person cordoned it: no candidate
  const abort = new AbortController();
  // a resync interval far beyond the test: only a watch event can make it act
  const done = runOperator({
    api: KubeApi.connect({ kubeconfig: viaProxy }, 'op-1'), namespace: systemNamespace, leaseName: 'kubeos-operator', identity: 'op-1',
    intervalMs: 600_000, leaseDurationSeconds: 1800, debounceMs: 10, signal: abort.signal,
    onEvent: (e) => {
      h.operatorEvents.push(e);
      h.operatorActivity.emit('change');
    },
  });
  t.teardown(async () => {
    abort.abort();
    await done;
  });
  await waitFor('a first pass with nothing to do', () => h.operatorEvents.some((e) => e.type === 'reconciled' && e.reports.every((r) => r.applied === 0)), 30_000, h.operatorActivity);
  const watches = () => proxy.seen.filter((r) => r.watch).length;
  await waitFor('both watches open', () => watches() >= 2, 30_000, proxy.activity);
  const before = watches();
  proxy.dropConnections(); // every open watch ends, as when a load balancer cuts idle connections
  await waitFor('the operator to open its watches again', () => watches() >= before + 2, 30_000, proxy.activity);
  await cluster.patchNode('node-a', { spec: { unschedulable: null } }); // uncordoned: now a candidate
  await waitFor('the operator to start the node', () => record('node-a') !== undefined, 30_000);
  t.is(record('node-a')?.rollout, 'fleet');
});

test.serial('kubeos rollout undo takes the nodes a rollout upgraded back to the version they ran, through the same rollout', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok' });
  h.startOperator('op-1');
  await waitFor('the rollout to 2.0.0', () => status().phase === 'Complete' && status().targetVersion === '2.0.0', 60_000);
  const undo = await runCli(['rollout', 'undo', 'fleet', '--kubeconfig', cluster.plane.adminKubeconfig, '--json']);
  t.is(undo.exitCode, 0, undo.stderr);
  t.like(undo.json, { from: '2.0.0', to: '1.0.0', nodes: ['node-a', 'node-b'] });
  await waitFor('the rollback to complete', () => status().phase === 'Complete' && status().targetVersion === '1.0.0' && status().observedGeneration === 2, 60_000);
  for (const n of ['node-a', 'node-b']) t.is(cluster.mirror.annotations(n)[annotations.currentVersion], '1.0.0');
  t.deepEqual(h.downgrades.sort(), ['node-a:1.0.0', 'node-b:1.0.0'], 'the agents were allowed to go back, and only for the rollback');
  t.deepEqual(JSON.parse(cluster.osupgrade('fleet')['metadata'].annotations['kubeos.io/rolled-back']), { from: '2.0.0', to: '1.0.0' });
  // like kubectl, undoing again would go back to where the rollback started; --dry-run changes nothing
  const again = await runCli(['rollout', 'undo', 'fleet', '--kubeconfig', cluster.plane.adminKubeconfig, '--dry-run', '--json']);
  t.like(again.json, { from: '1.0.0', to: '2.0.0', dryRun: true });
  t.is(cluster.osupgrade('fleet')['spec'].version, '1.0.0');
  await cluster.addOSUpgrade('untouched', { version: '3.0.0', paused: true });
  const nothing = await runCli(['rollout', 'undo', 'untouched', '--kubeconfig', cluster.plane.adminKubeconfig, '--json']);
  t.is(nothing.exitCode, 2, 'no node was upgraded by it: nothing to undo');
  t.is(jsonError(nothing.stdout).code, 'E_USAGE');
});

test.serial('onFailureBudget: rollback halts the rollout at its first failure and rolls the upgraded nodes back', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'fell-back', 'node-c': 'ok' }, { ...baseSpec, failureBudget: 1, onFailureBudget: 'rollback' });
  h.startOperator('op-1');
  await waitFor('the rollout to roll back and complete', () => status().phase === 'Complete' && status().targetVersion === '1.0.0', 60_000);
  t.false(h.upgrades.includes('node-c:2.0.0:beta'), 'no node was started after the failure');
  t.deepEqual(h.downgrades, ['node-a:1.0.0'], 'the one upgraded node went back');
  for (const n of ['node-a', 'node-b', 'node-c']) t.is(cluster.mirror.annotations(n)[annotations.currentVersion] ?? '1.0.0', '1.0.0', n);
  await waitFor('the RolledBack event', () => reasons('fleet').has('RolledBack'));
  t.like(cluster.osupgrade('fleet')['spec'], { version: '1.0.0', allowDowngrade: true });
});

test.serial('an agent whose final report does not get through sends it again, so the operator is not left waiting', async (t) => {
  const proxy = new FaultProxy(cluster.plane);
  await proxy.start();
  t.teardown(() => proxy.stop());
  await cluster.addNode('node-a');
  const viaProxy = await cluster.addAgent('node-a', { server: proxy.url });
  // the agent's reports: idle, downloading, installing, then committed: the fourth fails once
  proxy.faults.push({ method: 'PATCH', path: /^\/api\/v1\/nodes\/node-a$/, status: 500, times: 1, after: 3 });
  const abort = new AbortController();
  const running = runNodeAgent({
    api: KubeApi.connect({ kubeconfig: viaProxy }, 'kubeos-agent/node-a'), nodeName: 'node-a', signal: abort.signal, resyncMs: 200,
    status: async () => ({ currentVersion: '1.0.0' }),
    upgrade: async (version, _channel, progress) => {
      await progress('installing');
      return { state: 'committed', currentVersion: version };
    },
  });
  t.teardown(async () => {
    abort.abort();
    await running;
  });
  await waitFor('the agent to report in', () => cluster.mirror.annotations('node-a')[annotations.state] === 'idle');
  await cluster.patchNode('node-a', { metadata: { annotations: { [annotations.desiredVersion]: '2.0.0', [annotations.desiredChannel]: 'stable' } } });
  await waitFor('the committed state to arrive after all', () => cluster.mirror.annotations('node-a')[annotations.state] === 'committed', 30_000);
  t.is(proxy.injected.length, 1, 'the final report failed once');
  t.like(cluster.mirror.annotations('node-a'), { [annotations.currentVersion]: '2.0.0', [annotations.stateVersion]: '2.0.0' });
});

test.serial('an invalid OSUpgrade gets an Invalid status listing every problem and touches no node', async (t) => {
  await cluster.addNode('node-a');
  await cluster.addOSUpgrade('fleet', { version: '2.0.0' });
  await waitFor('the OSUpgrade', () => cluster.mirror.get('osupgrades', 'fleet') !== undefined);
  // what an object stored under an older, looser schema could hold: the operator checks it again
  const stored = cluster.osupgrade('fleet');
  const loose = { ...stored, spec: { version: '', maxUnavailable: '0%', maintenanceWindows: [{ days: ['Someday'], start: '25:00', end: '01:00' }] } };
  const api = KubeApi.connect({ kubeconfig: cluster.operatorKubeconfig }, 'op-1');
  const report = await reconcileRollout(loose, { api, now: Date.now });
  t.is(report.invalid?.code, 'E_OSUPGRADE_INVALID');
  const problems = (report.invalid?.details?.['problems'] as Array<{ path: string }>).map((p) => p.path);
  t.deepEqual(problems, ['spec.version', 'spec.maxUnavailable', 'spec.maintenanceWindows[0].days', 'spec.maintenanceWindows[0].start']);
  await waitFor('the Invalid status', () => status().phase === 'Invalid');
  t.is(cluster.mirror.node('node-a')['spec'].unschedulable, undefined);
  t.false(cluster.managers('node-a').includes('op-1'), 'no write to the node');
});

test.serial('reading an OSUpgrade that does not exist fails with E_OSUPGRADE_NOT_FOUND', async (t) => {
  const api = KubeApi.connect({ kubeconfig: cluster.operatorKubeconfig }, 'cli');
  const error = await t.throwsAsync(api.readOSUpgrade('nope'));
  t.is((error as { code?: string }).code, 'E_OSUPGRADE_NOT_FOUND');
});
