/**
 * The fleet end to end (qemu-tests/fleet-fixture.ts): three QEMU guests are Nodes of a real control
 * plane; the operator on the host rolls OSUpgrades across them; each guest's agent upgrades its
 * own disk through GRUB's boot counting. The tests share the guests and run in order:
 *   v2 with maxUnavailable 1 (v3 published meanwhile) → rollout undo back to v1 → v4 failing on the
 *   second node with onFailureBudget: rollback → v4 failing on the first node, paused → a version
 *   the signed channel does not list → an OSConfig of a sysctl and a file, one node at a time.
 * Waits are on watch events (the cluster mirror) and console markers, never on sleeps.
 */
import anyTest, { type ExecutionContext } from 'ava';
import { writeFile } from 'node:fs/promises';
import { kubeos } from '../test/helpers/cli.js';
import { canRun, testNeeding } from '../test/helpers/tools.js';
import { removeFileTempDirs } from '../test/helpers/temp-dir.js';
import { Fleet, type PhaseTimes } from './fleet-fixture.js';

const tools = ['qemu-system-x86_64', 'mke2fs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox', 'zstd', 'openssl'] as const;
const test = await testNeeding(tools);
const runnable = await canRun(tools);
const nodes = ['fleet-1', 'fleet-2', 'fleet-3'];
/**
 * ava stops the run after 20 minutes without a finished test (package.json) and says nothing of
 * why, and CI removes the logs: every wait ends within 15 minutes of its test's start instead, and
 * a failed test logs what the operator and the nodes were doing.
 */
let testStarted = Date.now();
const rolloutTimeoutMs = () => Math.max(1000, testStarted + 15 * 60_000 - Date.now());

type Obj = { metadata?: { name?: string; annotations?: Record<string, string>; labels?: Record<string, string> }; spec?: { unschedulable?: boolean }; status?: Record<string, unknown> };

let fleet: Fleet | undefined;
const cleanups: (() => Promise<void> | void)[] = [];
const hookContext = { teardown: (fn: () => Promise<void> | void) => cleanups.push(fn), log: () => {} } as unknown as ExecutionContext;
/**
 * On every watch event: the most nodes the operator held at once (cordoned), and the most
 * unavailable at once (cordoned or not Ready). The first is the operator's promise; the second can
 * also count an idle guest whose Lease renewal starved on a busy 2-core machine.
 */
let maxUnavailable = 0;
let maxCordoned = 0;
/** The most guests applying (or verifying) an OSConfig at once. */
let maxConfiguring = 0;
/** Nodes seen NotReady (their stand-in kubelet's Lease lapsed while they rebooted). */
const sawNotReady = new Set<string>();
const phaseLog = new Map<string, { phase: string; at: number }[]>();

anyTest.before(async () => {
  if (!runnable) return;
  fleet = await Fleet.start(hookContext, { nodes: nodes.length, versions: ['1.0.0', '2.0.0', '3.0.0', '4.0.0'], log: (line) => console.log(`  fleet: ${line}`) });
  const { mirror } = fleet.cluster;
  mirror.activity.on('change', () => {
    const all = (mirror.list('nodes') as Obj[]).filter((n) => nodes.includes(n.metadata?.name ?? ''));
    const down = all.filter((n) => n.spec?.unschedulable === true || !fleet!.ready(n.metadata?.name ?? ''));
    maxUnavailable = Math.max(maxUnavailable, down.length);
    maxCordoned = Math.max(maxCordoned, all.filter((n) => n.spec?.unschedulable === true).length);
    for (const n of all) if (!fleet!.ready(n.metadata?.name ?? '')) sawNotReady.add(n.metadata?.name ?? '');
    const configuring = all.filter((n) => /"phase":"(draining|upgrading|verifying)"/.test(n.metadata?.annotations?.['kubeos.io/config-rollout'] ?? ''));
    maxConfiguring = Math.max(maxConfiguring, configuring.length);
    for (const n of all) {
      const record = n.metadata?.annotations?.['kubeos.io/rollout'];
      if (record === undefined) continue;
      const { rollout, version, phase } = JSON.parse(record) as { rollout: string; version: string; phase: string };
      const key = `${rollout}/${version}/${n.metadata?.name}`;
      const phases = phaseLog.get(key) ?? [];
      if (phases.at(-1)?.phase !== phase) phases.push({ phase, at: Date.now() });
      phaseLog.set(key, phases);
    }
  });
  await fleet.publish('1.0.0');
});

anyTest.after.always(async () => {
  await fleet?.stop();
  for (const cleanup of cleanups.reverse()) await cleanup();
});
anyTest.after.always('remove the temporary directories', removeFileTempDirs);
anyTest.beforeEach(() => {
  testStarted = Date.now();
});
anyTest.afterEach.always(async (t) => {
  if (t.passed || fleet === undefined) return;
  t.log((await fleet.operatorLog()).slice(-4000));
  for (const n of nodes) t.log(`${n}: rollout ${annotation(fleet, n, 'rollout')}, state ${annotation(fleet, n, 'state')}, last-error ${annotation(fleet, n, 'last-error')}`);
});

function current(): Fleet {
  if (fleet === undefined) throw new Error('setup did not run');
  return fleet;
}

function osupgrade(f: Fleet, name: string): Obj | undefined {
  return f.cluster.mirror.get('osupgrades', name) as Obj | undefined;
}

function phaseOf(f: Fleet, name: string): string | undefined {
  return osupgrade(f, name)?.status?.['phase'] as string | undefined;
}

function node(f: Fleet, name: string): Obj {
  return f.cluster.mirror.node(name) as Obj;
}

function version(f: Fleet, name: string): string | undefined {
  return node(f, name).metadata?.labels?.['kubeos.io/version'];
}

function annotation(f: Fleet, name: string, key: string): string | undefined {
  return node(f, name).metadata?.annotations?.[`kubeos.io/${key}`];
}

function record(f: Fleet, name: string): { rollout: string; version: string; phase: string; from?: string } | undefined {
  const raw = annotation(f, name, 'rollout');
  return raw === undefined ? undefined : JSON.parse(raw) as never;
}

async function waitPhase(f: Fleet, name: string, phases: string[], timeoutMs = rolloutTimeoutMs()): Promise<void> {
  await f.cluster.mirror.waitFor(`OSUpgrade ${name} ${phases.join(' or ')}`, () => phases.includes(phaseOf(f, name) ?? ''), timeoutMs);
}

/** Each node's time from its first phase to done, and the rollout's makespan against ceil(N / maxUnavailable) x the slowest. */
function timing(rollout: string, target: string, started: number, ended: number, maxUnavail: number): { lines: string[]; makespan: number; bound: number; slowest: number; nodes: number } {
  const times: PhaseTimes[] = [];
  for (const [key, phases] of phaseLog) {
    const [r, v, n] = key.split('/');
    if (r === rollout && v === target) times.push({ node: n!, phases });
  }
  const lines: string[] = [];
  let slowest = 0;
  for (const t of times.sort((a, b) => a.node.localeCompare(b.node))) {
    const first = t.phases[0]!.at;
    const steps = t.phases.map((p, i) => `${p.phase} +${(((t.phases[i + 1]?.at ?? p.at) - p.at) / 1000).toFixed(1)}s`).join(', ');
    const total = t.phases.at(-1)!.at - first;
    slowest = Math.max(slowest, total);
    lines.push(`${t.node}: ${steps} (${(total / 1000).toFixed(1)} s)`);
  }
  const makespan = ended - started;
  const bound = Math.ceil(times.length / maxUnavail) * slowest;
  lines.push(`makespan ${(makespan / 1000).toFixed(1)} s; bound ceil(${times.length}/${maxUnavail}) x slowest node ${(slowest / 1000).toFixed(1)} s = ${(bound / 1000).toFixed(1)} s`);
  return { lines, makespan, bound, slowest, nodes: times.length };
}

const spec = (version: string, extra: Record<string, unknown> = {}) => ({
  version, channel: 'stable', maxUnavailable: 1, failureBudget: 1, nodeSelector: { 'kubeos.io/agent': 'host' },
  drain: { timeoutSeconds: 300 }, healthGate: { readySeconds: 5 }, nodeTimeoutSeconds: 600, ...extra,
});

test.serial('deploy/\'s agent DaemonSet runs on a managed node, and not on the guests, whose agent is their own host service', async (t) => {
  const f = current();
  const targetOf = (pod: { spec?: { affinity?: { nodeAffinity?: { requiredDuringSchedulingIgnoredDuringExecution?: { nodeSelectorTerms?: { matchFields?: { values?: string[] }[] }[] } } } } }) =>
    pod.spec?.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms?.[0]?.matchFields?.[0]?.values?.[0];
  const agentPods = () => (f.cluster.mirror.list('pods') as { metadata?: { namespace?: string; labels?: Record<string, string> } }[])
    .filter((p) => p.metadata?.namespace === 'kubeos-system' && p.metadata.labels?.['app.kubernetes.io/name'] === 'kubeos-agent');
  // the DaemonSet controller counts the nodes it should run on: the bystander alone (4 if the guests counted)
  const wait = await f.cluster.plane.kubectl(['wait', '-n', 'kubeos-system', 'daemonset/kubeos-agent', '--for=jsonpath={.status.desiredNumberScheduled}=1', '--timeout=60s']);
  const ds = await f.cluster.apps.readNamespacedDaemonSet({ namespace: 'kubeos-system', name: 'kubeos-agent' });
  t.is(wait.exitCode, 0, `desiredNumberScheduled ${ds.status?.desiredNumberScheduled}: ${wait.stderr}`);
  await f.cluster.mirror.waitFor('an agent pod for the bystander node', () => agentPods().length > 0, 60_000);
  t.deepEqual(agentPods().map((p) => targetOf(p as never)), ['bystander']);
});

test.serial('OSUpgrade to v2 with maxUnavailable 1: every node drained, upgraded, rebooted, committed, Ready and uncordoned, one at a time; v3 published meanwhile does not change the target', async (t) => {
  const f = current();
  await f.publish('2.0.0');
  maxUnavailable = 0;
  maxCordoned = 0;
  sawNotReady.clear();
  const started = Date.now();
  await f.cluster.addOSUpgrade('to-v2', spec('2.0.0'));
  // v3 appears on the channel once the first node is on v2
  await f.cluster.mirror.waitFor('a first node on 2.0.0', () => nodes.some((n) => version(f, n) === '2.0.0'), rolloutTimeoutMs());
  await f.publish('3.0.0');
  await waitPhase(f, 'to-v2', ['Complete', 'Paused']);
  const ended = Date.now();
  t.is(phaseOf(f, 'to-v2'), 'Complete', await f.operatorLog().then((l) => l.slice(-3000)));
  for (const n of nodes) {
    t.is(version(f, n), '2.0.0', n);
    t.is(annotation(f, n, 'state'), 'committed', n);
    t.not(node(f, n).spec?.unschedulable, true, `${n} uncordoned`);
    t.like(record(f, n), { rollout: 'to-v2', version: '2.0.0', phase: 'done', from: '1.0.0' });
  }
  t.is(maxCordoned, 1, 'never more than one node taken out at once, and each one was');
  t.log(`most nodes unavailable at once (cordoned or not Ready): ${maxUnavailable}`);
  const status = await f.agentStatus('fleet-1');
  t.like(status, { booted: 'B', slots: { A: { state: 'standby', version: '1.0.0' }, B: { state: 'good', version: '2.0.0' } } });
  // the pods were moved through the Eviction API, which the PodDisruptionBudget guards
  const evictions = (await f.cluster.audit()).filter((e) => e.objectRef?.subresource === 'eviction' && e.verb === 'create');
  t.true(evictions.length >= nodes.length, `${evictions.length} evictions`);
  t.is(f.readyPods().length, nodes.length);
  const { lines, makespan, bound, slowest, nodes: timed } = timing('to-v2', '2.0.0', started, ended, 1);
  t.is(timed, nodes.length);
  // npm run bench runs this test alone and reads its times here
  const timingFile = process.env['KUBEOS_FLEET_TIMING'];
  if (timingFile !== undefined) await writeFile(timingFile, JSON.stringify({ makespanMs: makespan, boundMs: bound, slowestMs: slowest, nodes: timed, maxUnavailable: 1 }));
  for (const line of lines) t.log(line);
  t.log(`seen NotReady while rebooting: ${[...sawNotReady].sort().join(', ') || 'none (each was back within the node monitor grace period)'}`);
  t.true(makespan <= bound * 1.5 + 30_000, `makespan ${makespan} ms against bound ${bound} ms`);
});

test.serial('kubeos rollout undo takes the fleet back to the version it ran before, through the same rollout', async (t) => {
  const f = current();
  maxCordoned = 0;
  const result = await kubeos(['rollout', 'undo', 'to-v2', '--kubeconfig', f.cluster.plane.adminKubeconfig, '--json']);
  t.is(result.exitCode, 0, result.stderr);
  await f.cluster.mirror.waitFor('to-v2 retargeted to 1.0.0 and complete', () => (osupgrade(f, 'to-v2')?.status?.['targetVersion'] as string | undefined) === '1.0.0' && phaseOf(f, 'to-v2') === 'Complete', rolloutTimeoutMs());
  for (const n of nodes) {
    t.is(version(f, n), '1.0.0', n);
    t.is(annotation(f, n, 'state'), 'committed', n);
  }
  t.is(maxCordoned, 1);
});

test.serial('v4 that never comes up healthy on the second node: GRUB falls back there, and onFailureBudget: rollback takes the first node back', async (t) => {
  const f = current();
  await f.publish('4.0.0');
  t.is(await f.shell('fleet-2', 'echo 4.0.0 > /etc/kubeos/test-unhealthy-versions && sync'), '0');
  await f.cluster.addOSUpgrade('to-v4', spec('4.0.0', { onFailureBudget: 'rollback' }));
  await f.cluster.mirror.waitFor('fleet-1 on 4.0.0', () => version(f, 'fleet-1') === '4.0.0', rolloutTimeoutMs());
  await f.cluster.mirror.waitFor('fleet-2 fell back', () => annotation(f, 'fleet-2', 'state') === 'fell-back', rolloutTimeoutMs());
  await f.cluster.mirror.waitFor('to-v4 rolled back to 1.0.0 and complete', () => (osupgrade(f, 'to-v4')?.status?.['targetVersion'] as string | undefined) === '1.0.0' && phaseOf(f, 'to-v4') === 'Complete', rolloutTimeoutMs());
  t.deepEqual(JSON.parse(osupgrade(f, 'to-v4')?.metadata?.annotations?.['kubeos.io/rolled-back'] ?? '{}'), { from: '4.0.0', to: '1.0.0' });
  t.is(version(f, 'fleet-1'), '1.0.0');
  t.is(version(f, 'fleet-2'), '1.0.0');
  t.is(version(f, 'fleet-3'), '1.0.0');
  t.false([...phaseLog.keys()].includes('to-v4/4.0.0/fleet-3'), 'fleet-3 was never asked for 4.0.0');
  const status = await f.agentStatus('fleet-2');
  t.true(status.fellBack);
  t.is(await f.shell('fleet-2', 'rm -f /etc/kubeos/test-unhealthy-versions && sync'), '0');
  await f.cluster.custom.deleteClusterCustomObject({ group: 'kubeos.io', version: 'v1alpha1', plural: 'osupgrades', name: 'to-v4' });
});

test.serial('v4 that never comes up healthy on the first node: it falls back, the failure budget pauses the rollout, and no other node is touched', async (t) => {
  const f = current();
  t.is(await f.shell('fleet-1', 'echo 4.0.0 > /etc/kubeos/test-unhealthy-versions && sync'), '0');
  await f.cluster.addOSUpgrade('to-v4-again', spec('4.0.0'));
  await waitPhase(f, 'to-v4-again', ['Paused', 'Complete']);
  t.is(phaseOf(f, 'to-v4-again'), 'Paused');
  t.is(annotation(f, 'fleet-1', 'state'), 'fell-back');
  t.is(version(f, 'fleet-1'), '1.0.0');
  const conditions = (osupgrade(f, 'to-v4-again')?.status?.['conditions'] ?? []) as { type: string; status: string; message: string }[];
  t.true(conditions.some((c) => c.type === 'FailureBudgetExceeded' && c.status === 'True' && /fleet-1/.test(c.message)), JSON.stringify(conditions));
  // the events say why: the node fell back, and that paused the rollout
  const events = f.cluster.mirror.events() as { reason?: string; message?: string; involvedObject?: { kind?: string; name?: string } }[];
  t.true(events.some((e) => e.involvedObject?.kind === 'Node' && e.involvedObject.name === 'fleet-1' && e.reason === 'KubeosUpgradeFellBack' && /did not come up/.test(e.message ?? '')), JSON.stringify(events.filter((e) => e.involvedObject?.name === 'fleet-1').map((e) => [e.reason, e.message])));
  t.true(events.some((e) => e.involvedObject?.kind === 'OSUpgrade' && e.involvedObject.name === 'to-v4-again' && e.reason === 'FailureBudgetExceeded'));
  for (const n of ['fleet-2', 'fleet-3']) {
    t.not(record(f, n)?.rollout, 'to-v4-again', `${n} untouched`);
    t.not(node(f, n).spec?.unschedulable, true, `${n} not cordoned`);
  }
  await f.cluster.custom.deleteClusterCustomObject({ group: 'kubeos.io', version: 'v1alpha1', plural: 'osupgrades', name: 'to-v4-again' });
});

test.serial('a version the signed channel does not list fails on the first node before its standby slot is opened', async (t) => {
  const f = current();
  const before = await f.agentStatus('fleet-1');
  await f.cluster.addOSUpgrade('to-unlisted', spec('9.9.9'));
  await waitPhase(f, 'to-unlisted', ['Paused', 'Complete'], 5 * 60_000);
  t.is(phaseOf(f, 'to-unlisted'), 'Paused');
  t.is(annotation(f, 'fleet-1', 'state'), 'failed');
  t.regex(annotation(f, 'fleet-1', 'last-error') ?? '', /E_VERSION_NOT_OFFERED/);
  t.deepEqual(await f.agentStatus('fleet-1'), before, 'the slots are as they were');
  for (const n of ['fleet-2', 'fleet-3']) t.not(record(f, n)?.rollout, 'to-unlisted', `${n} untouched`);
});

test.serial('an OSConfig of a sysctl and a file rolls across the fleet one node at a time, without a drain or a reboot, and each guest holds them', async (t) => {
  const f = current();
  const bootedBefore = Object.fromEntries(await Promise.all(nodes.map(async (n) => [n, await f.output(n, 'cat /proc/sys/kernel/random/boot_id')] as const)));
  maxCordoned = 0;
  maxConfiguring = 0;
  const toml = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "registry.k8s.io/pause:3.10"\n';
  await f.cluster.addOSConfig('tuning', {
    config: { sysctl: { 'net.core.somaxconn': 2048 }, files: [{ path: '/etc/containerd/config.toml', content: toml, mode: '0600' }] },
    maxUnavailable: 1, nodeSelector: { 'kubeos.io/agent': 'host' }, healthGate: { readySeconds: 5 }, nodeTimeoutSeconds: 600,
  });
  const osconfig = () => f.cluster.mirror.get('osconfigs', 'tuning') as Obj | undefined;
  await f.cluster.mirror.waitFor('OSConfig tuning Complete or Paused', () => ['Complete', 'Paused'].includes(String(osconfig()?.status?.['phase'])), rolloutTimeoutMs());
  t.is(osconfig()?.status?.['phase'], 'Complete', (await f.operatorLog()).slice(-3000));
  const digest = String(osconfig()?.status?.['targetVersion']);
  t.is(maxConfiguring, 1, 'maxUnavailable 1: one guest at a time');
  t.is(maxCordoned, 0, 'a sysctl and a file need no drain');
  for (const n of nodes) {
    t.is(annotation(f, n, 'config-applied'), digest, `${n} reports the configuration in force`);
    t.is(annotation(f, n, 'config-state'), 'committed');
    t.is(await f.output(n, 'cat /proc/sys/net/core/somaxconn'), '2048', `${n}: the sysctl is in force`);
    t.is(await f.output(n, 'stat -c %a /etc/containerd/config.toml'), '600');
    t.regex(await f.output(n, 'cat /etc/containerd/config.toml'), /sandbox_image = "registry.k8s.io\/pause:3.10"/);
    t.is(await f.output(n, 'cat /proc/sys/kernel/random/boot_id'), bootedBefore[n] ?? '', `${n} did not reboot`);
  }
});
