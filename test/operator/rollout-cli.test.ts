/**
 * `kubeos rollout status` and `kubeos operator run --dry-run`, run as subprocesses against a REAL
 * API server: rollout status as a person with an admin kubeconfig, the dry run with the operator's
 * own service-account token (so deploy/'s RBAC must allow every read it makes).
 */
import anyTest, { type TestFn } from 'ava';
import { execa } from 'execa';
import { planRollout } from '../../runtime/operator/plan-rollout.js';
import { readNodeView } from '../../runtime/fleet/node-protocol.js';
import { readRollout } from '../../runtime/fleet/osupgrade.js';
import { renderProgressLine, renderTable } from '../../runtime/operator/cli/rollout-command.js';
import { cliPath, kubeos as runCli } from '../helpers/cli.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { OperatorCluster } from './cluster-fixture.js';

const test = anyTest as TestFn<unknown>;
let cluster: OperatorCluster;
let kubeconfig: string;

// the built CLI (npm test builds dist/ first), as users run it
async function kubeos(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const result = await runCli(args);
  return { code: result.exitCode ?? 1, stdout: result.stdout, stderr: result.stderr };
}

test.before(async () => {
  cluster = await OperatorCluster.start({ controllerManager: false });
  kubeconfig = cluster.plane.adminKubeconfig;
});
test.after.always(async () => {
  await cluster?.stop();
});
test.afterEach.always(async () => {
  await cluster.reset();
});

/** Three nodes and an OSUpgrade, with the status the operator would have written. */
async function setup(_t: unknown) {
  for (const n of ['node-a', 'node-b', 'node-c']) await cluster.addNode(n);
  await cluster.addOSUpgrade('fleet', { version: '2.0.0', maxUnavailable: 2 });
  await cluster.mirror.waitFor('the fleet', () => cluster.mirror.list('nodes').length === 3 && cluster.mirror.get('osupgrades', 'fleet') !== undefined);
  const object = cluster.osupgrade('fleet');
  const plan = planRollout(readRollout(object), { nodes: cluster.mirror.list('nodes').map(readNodeView) }, Date.now());
  await cluster.patchOSUpgradeStatus('fleet', plan.status);
  await cluster.mirror.waitFor('the status', () => cluster.osupgrade('fleet')['status'] !== undefined);
  return { kubeconfig };
}

test.serial('rollout status prints a node table and a progress line', async (t) => {
  const { kubeconfig } = await setup(t);
  const { code, stdout, stderr } = await kubeos(['rollout', 'status', 'fleet', '--kubeconfig', kubeconfig]);
  t.is(code, 0, stderr);
  t.regex(stdout, /^NODE\s+PHASE/m);
  t.regex(stdout, /node-a\s+draining\s+\d+s$/m, 'ages as kubectl prints them');
  t.regex(stdout, /0\/3 on 2\.0\.0 · 2 draining · Progressing/);
});

test.serial('rollout status --json prints the status', async (t) => {
  const { kubeconfig } = await setup(t);
  const { code, stdout } = await kubeos(['rollout', 'status', 'fleet', '--kubeconfig', kubeconfig, '--json']);
  t.is(code, 0);
  const value = JSON.parse(stdout) as { status: { counts: Record<string, number>; maxUnavailable: number } };
  t.like(value.status, { maxUnavailable: 2, counts: { total: 3, draining: 2, pending: 1 } });
});

test.serial('rollout status of a missing OSUpgrade fails with E_OSUPGRADE_NOT_FOUND', async (t) => {
  const { kubeconfig } = await setup(t);
  const { code, stdout } = await kubeos(['rollout', 'status', 'nope', '--kubeconfig', kubeconfig, '--json']);
  t.is(code, 1);
  t.is((JSON.parse(stdout) as { error: { code: string } }).error.code, 'E_OSUPGRADE_NOT_FOUND');
});

test.serial('rollout status --watch ends with E_ROLLOUT_FAILED when the failure budget pauses the rollout', async (t) => {
  await setup(t);
  const child = execa('node', [cliPath, 'rollout', 'status', 'fleet', '--watch', '--kubeconfig', kubeconfig], { reject: false, timeout: 60_000 });
  // the first progress line comes once the CLI's watch is open: change the status only then
  await new Promise<void>((resolve) => child.stderr.once('data', () => resolve()));
  await cluster.patchOSUpgradeStatus('fleet', { phase: 'Paused', conditions: [{ type: 'FailureBudgetExceeded', status: 'True', reason: 'TooManyFailures', message: '1 failure', lastTransitionTime: new Date().toISOString() }] });
  const result = await child;
  t.is(result.exitCode, 1);
  t.regex(String(result.stderr), /error E_ROLLOUT_FAILED/);
});

test.serial('operator run --dry-run prints the plan and writes nothing', async (t) => {
  await setup(t);
  const since = (await cluster.audit()).length;
  const { code, stdout, stderr } = await kubeos(['operator', 'run', '--dry-run', '--json', '--kubeconfig', cluster.operatorKubeconfig]);
  t.is(code, 0, stderr);
  const [report] = JSON.parse(stdout) as Array<{ rollout: string; actions: Array<{ type: string; node: string }> }>;
  t.is(report?.rollout, 'fleet');
  t.deepEqual(report?.actions.map((a) => `${a.type} ${a.node}`), ['cordon node-a', 'cordon node-b']);
  const requests = (await cluster.audit()).slice(since).filter((e) => e['user']?.username === 'system:serviceaccount:kubeos-system:kubeos-operator');
  t.true(requests.length > 0, 'the dry run read the cluster as the operator');
  t.deepEqual(requests.filter((e) => !['get', 'list', 'watch'].includes(e['verb'])).map((e) => `${e['verb']} ${e['requestURI']}`), []);
  t.true(requests.every((e) => e['responseStatus']?.code === 200), 'RBAC allowed every read');
});

test.serial('operator run --dry-run says why nothing starts outside every maintenance window', async (t) => {
  for (const n of ['node-a', 'node-b']) await cluster.addNode(n);
  const tomorrow = new Date(Date.now() + 86_400_000);
  const day = (['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'] as const)[tomorrow.getUTCDay()]!;
  await cluster.addOSUpgrade('fleet', { version: '2.0.0', maintenanceWindows: [{ days: [day], start: '22:00', end: '23:00' }] });
  await cluster.mirror.waitFor('the fleet', () => cluster.mirror.get('osupgrades', 'fleet') !== undefined);
  const { code, stdout, stderr } = await kubeos(['operator', 'run', '--dry-run', '--kubeconfig', cluster.operatorKubeconfig]);
  t.is(code, 0, stderr);
  t.is(stdout.trim(), `fleet: nothing starts: outside every maintenance window; next opens ${day} 22:00 UTC`);
});

test.serial('a kubeconfig that does not exist is named in the error', async (t) => {
  const { code, stdout } = await kubeos(['rollout', 'status', 'fleet', '--kubeconfig', '/nonexistent/kubeconfig', '--json']);
  t.is(code, 1);
  const error = (JSON.parse(stdout) as { error: { code: string; details: { kubeconfig: string } } }).error;
  t.is(error.code, 'E_KUBECONFIG_MISSING');
  t.is(error.details.kubeconfig, '/nonexistent/kubeconfig');
});

test.serial('no kubeconfig anywhere fails with E_KUBECONFIG_MISSING and says where it looked', async (t) => {
  const home = await makeTempDir(t, 'kubeos-home-');
  const result = await runCli(['operator', 'run', '--dry-run'], { env: { HOME: home, KUBECONFIG: '', KUBERNETES_SERVICE_HOST: '' } });
  t.is(result.exitCode, 1);
  t.regex(result.stderr, /error E_KUBECONFIG_MISSING/);
  t.true(result.stderr.includes(`${home}/.kube/config`), result.stderr);
});

test('the progress line and table render from status alone', (t) => {
  const object = {
    metadata: { name: 'fleet', generation: 1 },
    spec: { version: '2.0.0' },
    status: {
      observedGeneration: 1, phase: 'Progressing' as const, targetVersion: '2.0.0', maxUnavailable: 1, nodesOmitted: 0,
      counts: { total: 4, pending: 1, draining: 0, upgrading: 1, verifying: 0, done: 1, failed: 1 },
      nodes: [{ name: 'n1', phase: 'failed' as const, reason: 'FellBack', message: 'trial boot failed' }, { name: 'n2', phase: 'upgrading' as const, agentState: 'installing' }],
      conditions: [],
    },
  };
  t.is(renderProgressLine(object), '[###############...............] 1/4 on 2.0.0 · 1 upgrading · 1 failed · Progressing');
  // 2 of 4 finished in the 20 minutes since it was created: the other 2 in about 20 more
  const created = { ...object, metadata: { ...object.metadata, creationTimestamp: '2026-01-01T10:00:00Z' } };
  t.is(renderProgressLine(created, Date.parse('2026-01-01T10:20:00Z')), '[###############...............] 1/4 on 2.0.0 · 1 upgrading · 1 failed · Progressing · ETA 20m');
  t.regex(renderTable(object), /n1\s+failed\s+.*FellBack: trial boot failed/);
});
