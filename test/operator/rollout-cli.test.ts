/** `kubeos rollout status` and `kubeos operator run --dry-run`, run as subprocesses against the FAKE API server. */
import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { planRollout } from '../../runtime/operator/plan-rollout.js';
import { readNodeView } from '../../runtime/operator/node-protocol.js';
import { readRollout } from '../../runtime/operator/osupgrade.js';
import { renderProgressLine, renderTable } from '../../builder/cli/commands/rollout.js';
import { FakeKubeApi } from './fake-kube-api.js';
import { kubeos as runCli } from '../helpers/cli.js';
import { makeTempDir } from '../helpers/temp-dir.js';

// the built CLI (npm test builds dist/ first), as users run it
async function kubeos(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const result = await runCli(args);
  return { code: result.exitCode ?? 1, stdout: result.stdout, stderr: result.stderr };
}

async function setup(t: { teardown: (fn: () => Promise<void>) => void }) {
  const fake = new FakeKubeApi();
  const url = await fake.start();
  t.teardown(() => fake.stop());
  const dir = await makeTempDir(t, 'kubeos-cli-');
  const kubeconfig = join(dir, 'kubeconfig');
  await writeFile(kubeconfig, [
    'apiVersion: v1', 'kind: Config', 'current-context: fake',
    'clusters:', `- name: fake`, `  cluster: { server: "${url}", insecure-skip-tls-verify: true }`,
    'users:', '- name: fake', '  user: { token: fake-token }',
    'contexts:', '- name: fake', '  context: { cluster: fake, user: fake }', '',
  ].join('\n'));
  for (const n of ['node-a', 'node-b', 'node-c']) fake.addNode(n);
  fake.addOSUpgrade('fleet', { version: '2.0.0', maxUnavailable: 2 });
  // give it the status the operator would have written
  const object = fake.store.osupgrades.get('fleet')!;
  const plan = planRollout(readRollout(object), { nodes: [...fake.store.nodes.values()].map(readNodeView) }, Date.now());
  fake.patch('osupgrades', 'fleet', { status: plan.status });
  return { fake, kubeconfig };
}

test('rollout status prints a node table and a progress line', async (t) => {
  const { kubeconfig } = await setup(t);
  const { code, stdout, stderr } = await kubeos(['rollout', 'status', 'fleet', '--kubeconfig', kubeconfig]);
  t.is(code, 0, stderr);
  t.regex(stdout, /^NODE\s+PHASE/m);
  t.regex(stdout, /node-a\s+draining/);
  t.regex(stdout, /0\/3 on 2\.0\.0 · 2 draining · Progressing/);
});

test('rollout status --json prints the status', async (t) => {
  const { kubeconfig } = await setup(t);
  const { code, stdout } = await kubeos(['rollout', 'status', 'fleet', '--kubeconfig', kubeconfig, '--json']);
  t.is(code, 0);
  const value = JSON.parse(stdout) as { status: { counts: Record<string, number>; maxUnavailable: number } };
  t.like(value.status, { maxUnavailable: 2, counts: { total: 3, draining: 2, pending: 1 } });
});

test('rollout status of a missing OSUpgrade fails with E_OSUPGRADE_NOT_FOUND', async (t) => {
  const { kubeconfig } = await setup(t);
  const { code, stdout } = await kubeos(['rollout', 'status', 'nope', '--kubeconfig', kubeconfig, '--json']);
  t.is(code, 1);
  t.is((JSON.parse(stdout) as { error: { code: string } }).error.code, 'E_OSUPGRADE_NOT_FOUND');
});

test('rollout status --watch ends with E_ROLLOUT_FAILED when the failure budget pauses the rollout', async (t) => {
  const { fake, kubeconfig } = await setup(t);
  const pending = kubeos(['rollout', 'status', 'fleet', '--watch', '--kubeconfig', kubeconfig, '--json']);
  // patch only once the CLI's watch is open, so it sees the change as an event
  if (fake.watching('osupgrades') === 0) await new Promise((resolve) => fake.activity.once('request', function check() {
    if (fake.watching('osupgrades') > 0) resolve(undefined);
    else fake.activity.once('request', check);
  }));
  fake.patch('osupgrades', 'fleet', { status: { phase: 'Paused', conditions: [{ type: 'FailureBudgetExceeded', status: 'True', reason: 'TooManyFailures', message: '1 failure', lastTransitionTime: new Date().toISOString() }] } });
  const { code, stdout } = await pending;
  t.is(code, 1);
  t.is((JSON.parse(stdout.slice(stdout.lastIndexOf('{\n  "error"'))) as { error: { code: string } }).error.code, 'E_ROLLOUT_FAILED');
});

test('operator run --dry-run prints the plan and writes nothing', async (t) => {
  const { fake, kubeconfig } = await setup(t);
  const { code, stdout, stderr } = await kubeos(['operator', 'run', '--dry-run', '--json', '--kubeconfig', kubeconfig]);
  t.is(code, 0, stderr);
  const [report] = JSON.parse(stdout) as Array<{ rollout: string; actions: Array<{ type: string; node: string }> }>;
  t.is(report?.rollout, 'fleet');
  t.deepEqual(report?.actions.map((a) => `${a.type} ${a.node}`), ['cordon node-a', 'cordon node-b']);
  t.false(fake.requests.some((r) => r.method !== 'GET'));
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
  t.regex(renderTable(object), /n1\s+failed\s+.*FellBack: trial boot failed/);
});
