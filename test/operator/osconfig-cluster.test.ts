/**
 * OSConfig rollouts against a REAL API server (installed with `kubectl apply -k deploy/`): the
 * operator rolls a node configuration out with the same planner as an upgrade, and each node's
 * agent reads the OSConfig with its own Node-bound credentials (deploy/'s RBAC and admission
 * policy) and reports in the configuration's annotations.
 *
 * What is not real: the host work of applying a configuration (each agent runs a stand-in that
 * checks the digest and takes a moment; test/agent/os-config.test.ts and qemu-tests cover the
 * host) and the kubelet (a stand-in flips Node Ready during a trial boot).
 */
import anyTest, { type TestFn } from 'ava';
import { EventEmitter, setMaxListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { runKubernetesAgent } from '../../runtime/agent/run-kubernetes-agent.js';
import { makeConfigHost } from '../agent/host-fixture.js';
import { KubeApi } from '../../runtime/fleet/kube-api.js';
import { annotations, configAnnotations, decodeRecord } from '../../runtime/fleet/node-protocol.js';
import { readConfigRollout } from '../../runtime/fleet/osconfig.js';
import { runNodeAgent, type NodeAgentEvent, type UpgradeOutcome } from '../../runtime/agent/run-node-agent.js';
import { runOperator } from '../../runtime/operator/run-operator.js';
import { kubeos } from '../helpers/cli.js';
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

/** How a node's stand-in agent ends an apply: committed, or rolled back by its health checks. */
type Behavior = 'ok' | 'rolled-back';

const sysctls = { sysctl: { 'net.core.somaxconn': 1024, 'vm.swappiness': '10' } };
const baseSpec = { config: sysctls, maxUnavailable: 1, healthGate: { readySeconds: 0 }, nodeTimeoutSeconds: 30, drain: { timeoutSeconds: 30, force: true } };

interface Harness {
  /** `node:digest` for every apply an agent ran. */
  applies: string[];
  agentEvents: Array<NodeAgentEvent & { node: string; at: number }>;
  activity: EventEmitter;
}

async function harness(t: { teardown: (fn: () => Promise<void> | void) => void }, nodes: Record<string, Behavior>, spec: Record<string, unknown>): Promise<Harness> {
  const stop = new AbortController();
  setMaxListeners(100, stop.signal);
  const applies: string[] = [];
  const agentEvents: Harness['agentEvents'] = [];
  const activity = new EventEmitter();
  const running: Promise<void>[] = [];
  for (const [name, behavior] of Object.entries(nodes)) {
    await cluster.addNode(name, { 'kubeos.io/managed': 'true' });
    const api = KubeApi.connect({ kubeconfig: await cluster.addAgent(name) }, `kubeos-agent/${name}`);
    const apply = async (source: string, digest: string): Promise<UpgradeOutcome> => {
      // what the real agent does first: read the OSConfig with its own credentials, check the digest
      const wanted = readConfigRollout(await api.readOSConfig(source));
      if (wanted.digest !== digest) return { state: 'failed', error: `E_CONFIG_CHANGED: ${source} holds ${wanted.digest}` };
      applies.push(`${name}:${digest}`);
      const reboots = wanted.config.kernelArgs.add.length > 0;
      if (reboots) await cluster.setNodeReady(name, false); // the trial boot
      await sleep(40); // the stand-in for writing the files and running the health checks
      if (reboots) await cluster.setNodeReady(name, true);
      if (behavior === 'rolled-back') return { state: 'fell-back', currentVersion: '', error: 'E_CONFIG_ROLLED_BACK: health check 10-ping failed; generation 0 is in force again' };
      return { state: 'committed', currentVersion: digest };
    };
    running.push(runNodeAgent({
      api,
      nodeName: name,
      status: async () => ({ currentVersion: '1.0.0' }),
      upgrade: async () => ({ state: 'failed', error: 'no upgrade in this test' }),
      config: { status: async () => ({ currentVersion: '' }), apply },
      signal: stop.signal,
      resyncMs: 200,
      onEvent: (e) => {
        agentEvents.push({ ...e, node: name, at: Date.now() });
        activity.emit('change');
      },
    }));
  }
  await cluster.addOSConfig('tuning', spec);
  const abort = new AbortController();
  stop.signal.addEventListener('abort', () => abort.abort());
  running.push(runOperator({
    api: KubeApi.connect({ kubeconfig: cluster.operatorKubeconfig }, 'op-1'),
    namespace: systemNamespace,
    leaseName: 'kubeos-operator',
    identity: 'op-1',
    intervalMs: 100,
    leaseDurationSeconds: 1,
    debounceMs: 10,
    signal: abort.signal,
  }));
  t.teardown(async () => {
    stop.abort();
    await Promise.allSettled(running);
  });
  return { applies, agentEvents, activity };
}

const waitFor = (what: string, predicate: () => boolean, timeoutMs?: number, extra?: EventEmitter) => cluster.mirror.waitFor(what, predicate, timeoutMs, extra);
const status = () => cluster.mirror.get('osconfigs', 'tuning')?.['status'] ?? {};
const configRecord = (node: string) => decodeRecord(cluster.mirror.annotations(node)[configAnnotations.rollout]);
const reasons = (name?: string) => new Set(cluster.mirror.events(name).map((e) => e['reason']));

/** The most agents applying at one time, from their start and end events. */
function mostAtOnce(events: Harness['agentEvents']): number {
  let now = 0;
  let most = 0;
  for (const e of events) {
    if (e.type === 'config-started') most = Math.max(most, ++now);
    if (e.type === 'config-ended') now--;
  }
  return most;
}

test.serial('an OSConfig of sysctls is applied one node at a time without a drain, by agents that read it with their own credentials', async (t) => {
  const h = await harness(t, { 'node-a': 'ok', 'node-b': 'ok', 'node-c': 'ok' }, baseSpec);
  await cluster.addPod('apps', 'web-1', 'node-a', { ownerKind: 'ReplicaSet' });
  await waitFor('the rollout to complete', () => status().phase === 'Complete', 60_000);

  const digest = status().targetVersion as string;
  t.regex(digest, /^config-[0-9a-f]{16}$/);
  t.deepEqual(h.applies.sort(), ['node-a', 'node-b', 'node-c'].map((n) => `${n}:${digest}`), 'each node applied it exactly once');
  t.is(mostAtOnce(h.agentEvents), 1, 'maxUnavailable 1: one node at a time');
  for (const node of ['node-a', 'node-b', 'node-c']) {
    t.like(cluster.mirror.annotations(node), { [configAnnotations.applied]: digest, [configAnnotations.state]: 'committed', [configAnnotations.stateFor]: digest });
    t.like(configRecord(node), { rollout: 'tuning', version: digest, phase: 'done' });
    t.is(cluster.mirror.annotations(node)[annotations.rollout], undefined, 'the upgrade record is untouched');
  }
  t.like(status().counts, { total: 3, done: 3, failed: 0 });
  t.is(status().conditions.find((c: { type: string }) => c.type === 'Ready')?.status, 'True');
  // no reboot in a sysctl: nothing was cordoned or evicted
  t.false(reasons('node-a').has('KubeosDraining'));
  t.true(reasons('node-a').has('KubeosConfigDone'));
  t.is(cluster.mirror.get('pods', 'apps/web-1')?.['metadata'].deletionTimestamp, undefined, 'the pod was not evicted');
  // kubeos rollout status follows an OSConfig as it does an OSUpgrade
  const shown = await kubeos(['rollout', 'status', 'osconfig/tuning', '--kubeconfig', cluster.plane.adminKubeconfig, '--watch', '--json']);
  t.is(shown.exitCode, 0, shown.stderr);
  t.like(shown.json, { name: 'tuning', kind: 'osconfig', status: { phase: 'Complete', targetVersion: digest } });
  const table = await kubeos(['rollout', 'status', 'osconfig/tuning', '--kubeconfig', cluster.plane.adminKubeconfig]);
  t.regex(table.stdout, new RegExp(`3/3 on ${digest} · Complete`));
  const wrong = await kubeos(['rollout', 'status', 'deployment/tuning', '--kubeconfig', cluster.plane.adminKubeconfig, '--json']);
  t.is(wrong.exitCode, 2);
  t.regex(wrong.stdout, /give an OSUpgrade name, osupgrade\/NAME or osconfig\/NAME/);
});

test.serial('an OSConfig with kernel arguments drains each node first; a node whose agent rolls it back fails as RolledBack and pauses the rollout', async (t) => {
  const spec = { ...baseSpec, config: { kernelArgs: { add: ['mitigations=auto'] } } };
  const h = await harness(t, { 'node-a': 'rolled-back', 'node-b': 'ok' }, spec);
  await waitFor('the rollout to pause', () => status().phase === 'Paused', 60_000);
  t.like(configRecord('node-a'), { phase: 'failed', reason: 'RolledBack' });
  t.regex(configRecord('node-a')?.message ?? '', /health check 10-ping failed/);
  t.true(reasons('node-a').has('KubeosDraining'), 'a kernel argument needs a reboot: the node was drained');
  t.not(cluster.mirror.node('node-a')['spec'].unschedulable, true, 'uncordoned again once it failed');
  t.is(cluster.mirror.annotations('node-a')[configAnnotations.desired], undefined, 'the desired configuration is withdrawn');
  t.is(configRecord('node-b'), undefined, 'the failure budget stopped the rollout before node-b');
  t.deepEqual(h.applies.map((a) => a.split(':')[0]), ['node-a']);
  t.regex(status().conditions.find((c: { type: string }) => c.type === 'Stalled')?.message ?? '', /node-a \(RolledBack\)/);
});

test.serial('an OSConfig whose configuration is wrong gets an Invalid status listing every problem, and no node is touched', async (t) => {
  await harness(t, { 'node-a': 'ok' }, { config: { sysctl: { 'not a key': 1 }, swap: { size: '1G' }, limits: [{ domain: '*', type: 'soft', item: 'nofiles', value: 1 }] } });
  await waitFor('the Invalid status', () => status().phase === 'Invalid', 30_000);
  const message = status().conditions.find((c: { type: string }) => c.type === 'Invalid')?.message as string;
  t.regex(message, /spec\.config\.swap/);
  t.regex(message, /spec\.config\.sysctl\["not a key"\]/);
  t.regex(message, /spec\.config\.limits\[0\]\.item/);
  t.is(cluster.mirror.annotations('node-a')[configAnnotations.desired], undefined);
  await waitFor('the InvalidSpec event on the OSConfig', () => reasons('tuning').has('InvalidSpec'));
  t.is(cluster.mirror.events('tuning').find((e) => e['reason'] === 'InvalidSpec')?.['involvedObject'].kind, 'OSConfig');
});

test.serial('the API server refuses an OSConfig file outside /etc through the CRD\'s own rules', async (t) => {
  const error = await t.throwsAsync(cluster.addOSConfig('tuning', { config: { files: [{ path: '/usr/bin/evil', content: 'x' }] } }));
  t.regex(String((error as { body?: unknown }).body ?? error?.message), /path must be under \/etc and outside \/etc\/kubeos/);
});

test.serial('docs/examples/osconfig.yaml applies with kubectl and reads as a valid rollout', async (t) => {
  await cluster.plane.kubectlOk(['apply', '-f', 'docs/examples/osconfig.yaml']);
  const api = KubeApi.connect({ kubeconfig: cluster.operatorKubeconfig }, 'op-1');
  const { rollout, config } = readConfigRollout(await api.readOSConfig('node-tuning'));
  t.like(rollout.spec, { maxUnavailable: '25%', failureBudget: 1, nodeTimeoutSeconds: 900 });
  t.deepEqual(config.sysctl, { 'net.core.somaxconn': '4096', 'vm.max_map_count': '262144' });
  t.is(config.files[0]?.path, '/etc/containerd/config.toml');
  t.false(rollout.drainFirst);
  const missing = await t.throwsAsync(api.readOSConfig('nope'));
  t.true(missing instanceof KubeosError && missing.code === 'E_OSCONFIG_NOT_FOUND');
});

test.serial('the real cluster-mode agent on a file-backed host applies an OSConfig as written (file modes, sysctls), and a failing health check rolls it back and stalls the rollout', async (t) => {
  const hosts = { 'node-a': await makeConfigHost(t), 'node-b': await makeConfigHost(t) };
  const stop = new AbortController();
  const running: Promise<void>[] = [];
  const logs: string[] = [];
  for (const [name, h] of Object.entries(hosts)) {
    await cluster.addNode(name, { 'kubeos.io/managed': 'true' });
    const kubeconfig = await cluster.addAgent(name);
    running.push(runKubernetesAgent(h.agent, { nodeName: name, kubeconfig, signal: stop.signal, log: (line) => logs.push(`${name}: ${line}`) }));
  }
  // node-b's health checks fail: it must put its previous configuration back
  await writeFile(join(hosts['node-b'].health, '10-fails'), '#!/bin/sh\necho broken >&2\nexit 1\n', { mode: 0o755 });
  running.push(runOperator({ api: KubeApi.connect({ kubeconfig: cluster.operatorKubeconfig }, 'op-1'), namespace: systemNamespace, leaseName: 'kubeos-operator', identity: 'op-1', intervalMs: 100, leaseDurationSeconds: 1, debounceMs: 10, signal: stop.signal }));
  t.teardown(async () => {
    stop.abort();
    await Promise.allSettled(running);
  });
  const toml = 'version = 2\n[plugins]\n';
  await cluster.addOSConfig('tuning', { ...baseSpec, config: { sysctl: { 'vm.swappiness': 10 }, files: [{ path: '/etc/containerd/config.toml', content: toml, mode: '0640' }] } });
  // node-b is the last node: the rollout ends Complete with a failure, Stalled by the budget
  await waitFor('node-b to fail', () => status().counts?.failed === 1, 60_000).catch((error: unknown) => {
    t.log(logs.join('\n'), JSON.stringify(status()));
    throw error;
  });
  const digest = status().targetVersion as string;
  const a = hosts['node-a'];
  t.like(cluster.mirror.annotations('node-a'), { [configAnnotations.applied]: digest, [configAnnotations.state]: 'committed' }, logs.join('\n'));
  t.is(await readFile(join(a.root, 'proc/sys/vm/swappiness'), 'utf8'), '10\n');
  t.is(await readFile(join(a.root, 'etc/containerd/config.toml'), 'utf8'), toml);
  t.is((await stat(join(a.root, 'etc/containerd/config.toml'))).mode & 0o777, 0o640);
  const b = hosts['node-b'];
  t.like(configRecord('node-b'), { phase: 'failed', reason: 'RolledBack' });
  t.regex(cluster.mirror.annotations('node-b')[configAnnotations.lastError] ?? '', /E_CONFIG_ROLLED_BACK: generation 1 was not committed: health check \S+10-fails failed: broken; generation 0 is in force again/);
  t.like(status().conditions.find((c: { type: string }) => c.type === 'Stalled'), { status: 'True', reason: 'FailureBudgetExceeded' });
  t.is(await readFile(join(b.root, 'proc/sys/vm/swappiness'), 'utf8'), '60\n', 'node-b is back on what it had');
  t.is(await readFile(join(b.root, 'etc/containerd/config.toml'), 'utf8'), 'version = 2 # from the image\n');
});
