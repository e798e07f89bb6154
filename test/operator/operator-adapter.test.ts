/**
 * The operator and the node agent against a FAKE Kubernetes API server (test/operator/fake-kube-api.ts)
 * over real HTTP, so @kubernetes/client-node, its watches and error paths run for real.
 */
import test from 'ava';
import { setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { KubeApi } from '../../runtime/operator/kube-api.js';
import { annotations, decodeRecord } from '../../runtime/operator/node-protocol.js';
import { reconcileRollout } from '../../runtime/operator/reconcile-rollout.js';
import { runNodeAgent, type UpgradeOutcome, type UpgradeProgress } from '../../runtime/operator/run-node-agent.js';
import { runOperator, type OperatorEvent } from '../../runtime/operator/run-operator.js';
import { FakeKubeApi } from './fake-kube-api.js';

type Behavior = 'ok' | 'never-returns' | 'fell-back';

interface Harness {
  fake: FakeKubeApi;
  upgrades: string[];
  stop: AbortController;
  operatorEvents: OperatorEvent[];
  startOperator: (identity: string, extra?: { releaseOnExit?: boolean }) => { abort: AbortController; done: Promise<void> };
}

/**
 * Resolves once `predicate` holds, checking it after every change and request the fake API sees
 * (everything the operator and the agents do goes through it); the deadline only reports a hang.
 */
function waitFor(fake: FakeKubeApi, what: string, predicate: () => boolean, timeoutMs = 15_000): Promise<void> {
  if (predicate()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (!predicate()) return;
      done();
      resolve();
    };
    const timer = setTimeout(() => {
      done();
      reject(new Error(`timed out waiting for ${what}`));
    }, timeoutMs);
    const done = () => {
      clearTimeout(timer);
      fake.activity.off('change', check);
      fake.activity.off('request', check);
    };
    fake.activity.on('change', check);
    fake.activity.on('request', check);
  });
}

/** Requests matching `path` after this call: a way to wait for N more rounds of an actor. */
function countRequests(fake: FakeKubeApi, path: RegExp): () => number {
  const start = fake.requests.length;
  return () => fake.requests.slice(start).filter((r) => path.test(r.path)).length;
}

const baseSpec = {
  version: '2.0.0',
  channel: 'beta',
  maxUnavailable: 1,
  healthGate: { readySeconds: 0 },
  drain: { timeoutSeconds: 30, force: true, deleteEmptyDirData: true },
  nodeTimeoutSeconds: 30,
  failureBudget: 1,
};

async function harness(t: { teardown: (fn: () => Promise<void> | void) => void }, nodes: Record<string, Behavior>, spec: Record<string, unknown> = baseSpec, upgradeMs = 40): Promise<Harness> {
  const fake = new FakeKubeApi();
  const url = await fake.start();
  const stop = new AbortController();
  setMaxListeners(100, stop.signal); // one per agent and operator in the harness
  const upgrades: string[] = [];
  const operatorEvents: OperatorEvent[] = [];
  const running: Promise<void>[] = [];
  for (const name of Object.keys(nodes)) fake.addNode(name, { pool: 'workers' });
  fake.addOSUpgrade('fleet', spec);

  for (const [name, behavior] of Object.entries(nodes)) {
    const upgrade = async (version: string, channel: string, progress: UpgradeProgress): Promise<UpgradeOutcome> => {
      upgrades.push(`${name}:${version}:${channel}`);
      await progress('installing');
      await sleep(upgradeMs);
      await progress('rebooting');
      fake.setNodeReady(name, false); // the kubelet goes away with the reboot
      await sleep(upgradeMs);
      if (behavior === 'never-returns') return { state: 'rebooting' };
      fake.setNodeReady(name, true);
      if (behavior === 'fell-back') return { state: 'fell-back', currentVersion: '1.0.0', error: 'trial boot of 2.0.0 failed; back on 1.0.0' };
      return { state: 'committed', currentVersion: version };
    };
    running.push(runNodeAgent({
      api: KubeApi.connect({ server: url }, `kubeos-agent/${name}`),
      nodeName: name,
      status: async () => ({ currentVersion: '1.0.0' }),
      upgrade,
      signal: stop.signal,
      resyncMs: 200,
    }));
  }

  const startOperator = (identity: string, extra: { releaseOnExit?: boolean } = {}) => {
    const abort = new AbortController();
    stop.signal.addEventListener('abort', () => abort.abort());
    const done = runOperator({
      api: KubeApi.connect({ server: url }, identity),
      namespace: 'kubeos-system',
      leaseName: 'kubeos-operator',
      identity,
      intervalMs: 100,
      leaseDurationSeconds: 1,
      debounceMs: 10,
      signal: abort.signal,
      onEvent: (e) => operatorEvents.push(e),
      ...extra,
    });
    running.push(done);
    return { abort, done };
  };

  t.teardown(async () => {
    stop.abort();
    await Promise.allSettled(running);
    await fake.stop();
  });
  return { fake, upgrades, stop, operatorEvents, startOperator };
}

const record = (fake: FakeKubeApi, node: string) => decodeRecord(fake.annotations(node)[annotations.rollout]);
const status = (fake: FakeKubeApi) => fake.store.osupgrades.get('fleet')!['status'] ?? {};

test('a rollout drains, upgrades and uncordons every node through the node agents', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok' });
  h.fake.addPod('apps', 'web-1', 'node-a', { ownerKind: 'ReplicaSet' });
  h.fake.addPod('apps', 'scratch', 'node-a', { ownerKind: 'ReplicaSet', emptyDir: true });
  h.fake.addPod('kube-system', 'fluentd', 'node-a', { ownerKind: 'DaemonSet' });
  h.fake.addPod('kube-system', 'etcd-node-a', 'node-a', { mirror: true });
  h.startOperator('op-1');
  await waitFor(h.fake, 'the rollout to complete', () => status(h.fake).phase === 'Complete');

  t.deepEqual(h.upgrades.sort(), ['node-a:2.0.0:beta', 'node-b:2.0.0:beta', 'node-c:2.0.0:beta']);
  for (const node of ['node-a', 'node-b', 'node-c']) {
    const a = h.fake.annotations(node);
    t.is(a[annotations.currentVersion], '2.0.0');
    t.is(a[annotations.state], 'committed');
    t.is(record(h.fake, node)?.phase, 'done');
    t.not(h.fake.node(node)['spec'].unschedulable, true, `${node} left cordoned`);
  }
  // DaemonSet and mirror pods are left alone; the rest went through the Eviction API
  t.deepEqual([...h.fake.store.pods.keys()].sort(), ['kube-system/etcd-node-a', 'kube-system/fluentd']);
  const evictions = h.fake.requests.filter((r) => r.path.endsWith('/eviction')).map((r) => r.path);
  t.deepEqual(evictions.sort(), ['/api/v1/namespaces/apps/pods/scratch/eviction', '/api/v1/namespaces/apps/pods/web-1/eviction']);
  const s = status(h.fake);
  t.like(s, { observedGeneration: 1, targetVersion: '2.0.0', counts: { total: 3, done: 3, failed: 0, pending: 0 } });
  t.true(s.conditions.some((c: { type: string; status: string }) => c.type === 'Complete' && c.status === 'True'));
  const reasons = new Set(h.fake.events().map((e) => e['reason']));
  for (const reason of ['KubeosDraining', 'KubeosUpgradeRequested', 'KubeosUpgraded', 'KubeosUpgradeDone']) t.true(reasons.has(reason), reason);
});

test('an eviction blocked by a PodDisruptionBudget is retried until the budget allows it', async (t) => {
  const h = await harness(t, { 'node-a': 'ok' });
  h.fake.addPod('db', 'postgres-0', 'node-a', { ownerKind: 'StatefulSet' });
  h.fake.pdbBlocked.add('db/postgres-0');
  h.startOperator('op-1');
  await waitFor(h.fake, 'three refused evictions', () => h.fake.requests.filter((r) => r.path.endsWith('/eviction') && r.status === 429).length >= 3);

  t.is(record(h.fake, 'node-a')?.phase, 'draining');
  t.true(h.fake.node('node-a')['spec'].unschedulable);
  t.deepEqual(h.upgrades, [], 'no upgrade while a pod is still on the node');
  const blocked = h.fake.events().filter((e) => e['reason'] === 'KubeosEvictionBlocked');
  t.is(blocked.length, 1, 'one Event per blocked pod, not one per retry');
  t.is(blocked[0]?.['type'], 'Warning');

  h.fake.pdbBlocked.delete('db/postgres-0'); // the budget frees up
  await waitFor(h.fake, 'the rollout to complete', () => status(h.fake).phase === 'Complete');
  t.deepEqual(h.upgrades, ['node-a:2.0.0:beta']);
  t.false(h.fake.store.pods.has('db/postgres-0'));
});

test('a node that never comes back is marked failed and the failure budget pauses the rollout', async (t) => {
  const nodes = { 'node-a': 'never-returns', 'node-b': 'ok', 'node-c': 'ok', 'node-d': 'ok', 'node-e': 'ok', 'node-f': 'ok' } as const;
  const h = await harness(t, nodes, { ...baseSpec, nodeTimeoutSeconds: 2, maxUnavailable: 2 }, 300);
  h.startOperator('op-1');
  await waitFor(h.fake, 'node-a to fail', () => record(h.fake, 'node-a')?.phase === 'failed', 10_000);
  await waitFor(h.fake, 'the rollout to pause', () => h.fake.store.osupgrades.get('fleet')!['spec'].paused === true);
  await waitFor(h.fake, 'the status to say so', () => status(h.fake).phase === 'Paused');

  t.like(record(h.fake, 'node-a'), { phase: 'failed', reason: 'NodeTimeout' });
  t.is(h.fake.annotations('node-a')[annotations.desiredVersion], undefined, 'desired version withdrawn');
  t.true(h.fake.node('node-a')['spec'].unschedulable, 'a node that is not back stays cordoned');
  t.like(status(h.fake), { counts: { failed: 1 } });
  t.true(status(h.fake).counts.pending >= 1);
  t.true(status(h.fake).conditions.some((c: { type: string; status: string }) => c.type === 'FailureBudgetExceeded' && c.status === 'True'));
  t.true(h.fake.events().some((e) => e['reason'] === 'FailureBudgetExceeded'));
  t.true(h.fake.events().some((e) => e['reason'] === 'KubeosUpgradeNodeTimeout'));
  const startedWhenPaused = h.upgrades.length;
  // five more reconciles of the paused rollout (each reads the OSUpgrades) start nothing
  const reconciles = countRequests(h.fake, /osupgrades$/);
  await waitFor(h.fake, 'five more reconciles', () => reconciles() >= 5);
  t.is(h.upgrades.length, startedWhenPaused, 'nothing started while paused');
  t.false(h.upgrades.includes('node-f:2.0.0:beta'));

  h.fake.patch('osupgrades', 'fleet', { spec: { paused: false } }); // a person resumes
  await waitFor(h.fake, 'the rollout to complete', () => status(h.fake).phase === 'Complete');
  t.deepEqual(h.upgrades.sort(), Object.keys(nodes).map((n) => `${n}:2.0.0:beta`), 'the failed node is not retried');
  t.like(status(h.fake), { counts: { failed: 1, done: 5 } });
  t.true(h.fake.events().some((e) => e['reason'] === 'Resumed'));
});

test('a node that fell back is marked failed and its agent does not retry', async (t) => {
  const h = await harness(t, { 'node-a': 'fell-back' }, { ...baseSpec, failureBudget: 2 });
  h.startOperator('op-1');
  await waitFor(h.fake, 'the rollout to complete', () => status(h.fake).phase === 'Complete');
  t.like(record(h.fake, 'node-a'), { phase: 'failed', reason: 'FellBack' });
  t.is(h.fake.annotations('node-a')[annotations.state], 'fell-back');
  t.not(h.fake.node('node-a')['spec'].unschedulable, true, 'a node back on its old version is uncordoned');
  // the operator puts the version back: the agent must not loop on it
  const reads = countRequests(h.fake, /\/nodes\/node-a$/);
  h.fake.patch('nodes', 'node-a', { metadata: { annotations: { [annotations.desiredVersion]: '2.0.0' } } });
  // the agent re-reads its Node on every resync: after two more reads it has seen the change
  await waitFor(h.fake, 'the agent to re-read its Node twice', () => reads() >= 2);
  t.deepEqual(h.upgrades, ['node-a:2.0.0:beta']);
});

test('an operator restarted mid-rollout resumes from the cluster, not from memory', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok', 'node-d': 'ok' }, baseSpec, 100);
  const first = h.startOperator('op-1', { releaseOnExit: false });
  await waitFor(h.fake, 'the first node to be done', () => ['node-a', 'node-b', 'node-c', 'node-d'].some((n) => record(h.fake, n)?.phase === 'done'));
  await waitFor(h.fake, 'another node in flight', () => ['node-b', 'node-c', 'node-d'].some((n) => ['draining', 'upgrading', 'verifying'].includes(record(h.fake, n)?.phase ?? '')));
  first.abort.abort(); // a crash: the lease is not released
  await first.done;
  const writesBefore = h.fake.requests.length;

  h.startOperator('op-2');
  await waitFor(h.fake, 'the rollout to complete', () => status(h.fake).phase === 'Complete');
  t.deepEqual(h.upgrades.sort(), ['node-a:2.0.0:beta', 'node-b:2.0.0:beta', 'node-c:2.0.0:beta', 'node-d:2.0.0:beta'], 'every node upgraded exactly once');
  const lease = h.fake.store.leases.get('kubeos-system/kubeos-operator')!;
  t.is(lease['spec'].holderIdentity, 'op-2');
  t.is(lease['spec'].leaseTransitions, 1);
  const op2Cordons = h.fake.requests.slice(writesBefore).filter((r) => r.fieldManager === 'op-2' && r.method === 'PATCH' && r.path.startsWith('/api/v1/nodes/'));
  t.true(op2Cordons.length > 0, 'the new replica did the rest');
});

test('two replicas never act at once', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok' });
  h.startOperator('op-1');
  h.startOperator('op-2');
  await waitFor(h.fake, 'the rollout to complete', () => status(h.fake).phase === 'Complete');
  const writers = new Set(h.fake.requests.filter((r) => r.method === 'PATCH' && r.fieldManager?.startsWith('op-')).map((r) => r.fieldManager));
  t.is(writers.size, 1, `writes from ${[...writers].join(', ')}`);
  t.true(h.operatorEvents.some((e) => e.type === 'leading'));
});

test('a failed API call is reported as E_KUBERNETES and retried on the next reconcile', async (t) => {
  const h = await harness(t, { 'node-a': 'ok' });
  h.fake.faults.push({ method: 'PATCH', path: /^\/api\/v1\/nodes\/node-a$/, status: 500, times: 1, fieldManager: 'op-1' });
  h.startOperator('op-1');
  await waitFor(h.fake, 'the rollout to complete', () => status(h.fake).phase === 'Complete');
  const errors = h.operatorEvents.flatMap((e) => (e.type === 'reconciled' ? e.reports.flatMap((r) => r.errors) : []));
  t.true(errors.length >= 1);
  t.is(errors[0]?.code, 'E_KUBERNETES');
  t.like(errors[0]?.details, { status: 500 });
});

test('an invalid OSUpgrade gets an Invalid status listing every problem and touches no node', async (t) => {
  const fake = new FakeKubeApi();
  const url = await fake.start();
  t.teardown(() => fake.stop());
  fake.addNode('node-a');
  fake.addOSUpgrade('fleet', { version: '', maxUnavailable: '0%', maintenanceWindows: [{ days: ['Someday'], start: '25:00', end: '01:00' }] });
  const api = KubeApi.connect({ server: url }, 'op-1');
  const report = await reconcileRollout(fake.store.osupgrades.get('fleet')!, { api, now: Date.now });
  t.is(report.invalid?.code, 'E_OSUPGRADE_INVALID');
  const problems = (report.invalid?.details?.['problems'] as Array<{ path: string }>).map((p) => p.path);
  t.deepEqual(problems, ['spec.version', 'spec.maxUnavailable', 'spec.maintenanceWindows[0].days', 'spec.maintenanceWindows[0].start']);
  t.is(status(fake).phase, 'Invalid');
  t.false(fake.requests.some((r) => r.method === 'PATCH' && r.path.startsWith('/api/v1/nodes')));
});

test('reading an OSUpgrade that does not exist fails with E_OSUPGRADE_NOT_FOUND', async (t) => {
  const fake = new FakeKubeApi();
  const url = await fake.start();
  t.teardown(() => fake.stop());
  const api = KubeApi.connect({ server: url }, 'cli');
  const error = await t.throwsAsync(api.readOSUpgrade('nope'));
  t.is((error as { code?: string }).code, 'E_OSUPGRADE_NOT_FOUND');
});
