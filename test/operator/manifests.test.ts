/**
 * deploy/ against a REAL API server, through the kubectl of the same release: what
 * `kubectl apply -k deploy/` installs, what the CRD's schema and CEL rules refuse, and what the
 * operator's and the agent's credentials may and may not do (RBAC, and the agent's
 * ValidatingAdmissionPolicy with a token bound to a pod on its node).
 */
import anyTest, { type TestFn } from 'ava';
import { readFile } from 'node:fs/promises';
import { agentConfigPath, imageAgentPaths } from '../../builder/rootfs/stage-agent.js';
import { versionPattern } from '../../runtime/core/compare-versions.js';
import { annotations, configAnnotations } from '../../runtime/fleet/node-protocol.js';
import { OperatorCluster, systemNamespace } from './cluster-fixture.js';

const test = anyTest as TestFn<unknown>;
const packageVersion = (JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
let cluster: OperatorCluster;
let agentOnA: string;

test.before(async () => {
  cluster = await OperatorCluster.start({ controllerManager: false });
  for (const node of ['node-a', 'node-b']) await cluster.addNode(node, { 'kubeos.io/managed': 'true' });
  agentOnA = await cluster.addAgent('node-a');
  // A new ValidatingAdmissionPolicy is enforced once the API server's admission plugin has loaded
  // it, a moment after it is created: wait for that like for the server's readiness, with a
  // server-side dry run that the policy must refuse.
  const probe = ['patch', 'node', 'node-b', '--dry-run=server', '--type=merge', '-p', JSON.stringify({ metadata: { annotations: { [annotations.state]: 'idle' } } })];
  for (let deadline = Date.now() + 60_000; ; ) {
    const result = await cluster.plane.kubectl(probe, { kubeconfig: agentOnA });
    if (result.exitCode !== 0 && result.stderr.includes('kubeos-agent-own-node')) break;
    if (Date.now() > deadline) throw new Error(`the admission policy was not enforced within 60 s: ${result.stderr}`);
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
});
test.after.always(async () => {
  await cluster?.stop();
});

const osupgrade = (name: string, spec: Record<string, unknown>) => JSON.stringify({ apiVersion: 'kubeos.io/v1alpha1', kind: 'OSUpgrade', metadata: { name }, spec });

test('kubectl apply -k deploy/ installs everything in one go, and applying it again would change nothing', async (t) => {
  // the server-side dry run of a second apply finds nothing to change (exit 0: no differences)
  const diff = await cluster.plane.kubectl(['diff', '-k', 'deploy/']);
  t.is(diff.exitCode, 0, diff.stdout + diff.stderr);
  t.is(diff.stdout, '');
  for (const [kind, name] of [
    ['namespace', 'kubeos-system'], ['crd', 'osupgrades.kubeos.io'], ['clusterrole', 'kubeos-operator'], ['clusterrole', 'kubeos-agent'],
    ['validatingadmissionpolicy', 'kubeos-agent-own-node'], ['validatingadmissionpolicybinding', 'kubeos-agent-own-node'],
  ] as const) {
    t.is((await cluster.plane.kubectl(['get', kind, name])).exitCode, 0, `${kind}/${name}`);
  }
  for (const [kind, name] of [['daemonset', 'kubeos-agent'], ['deployment', 'kubeos-operator'], ['serviceaccount', 'kubeos-operator'], ['pdb', 'kubeos-operator']] as const) {
    t.is((await cluster.plane.kubectl(['get', '-n', systemNamespace, kind, name])).exitCode, 0, `${kind}/${name}`);
  }
  const rendered = await cluster.plane.kubectlOk(['kustomize', 'deploy/']);
  t.false(/^kind: OSUpgrade$/m.test(rendered), 'applying deploy/ starts no rollout');
  t.true(rendered.indexOf('kind: Namespace') < rendered.indexOf('kind: CustomResourceDefinition'), 'the namespace first, then the CRD');
  t.deepEqual([...new Set([...rendered.matchAll(/^\s+image: (\S+)$/gm)].map((m) => m[1]))], [`ghcr.io/kubeos/kubeos:${packageVersion}`], 'one image, pinned to the project version');
});

test('kubectl get osupgrades shows the rollout columns and kubectl explain documents the spec', async (t) => {
  await cluster.plane.kubectlOk(['apply', '-f', '-'], { input: osupgrade('columns', { version: '1.4.0', maxUnavailable: '10%' }) });
  t.teardown(() => cluster.plane.kubectl(['delete', 'osupgrade', 'columns']));
  const table = await cluster.plane.kubectlOk(['get', 'osupgrades']);
  t.regex(table, /^NAME\s+VERSION\s+PHASE\s+DONE\s+TOTAL\s+UPGRADING\s+FAILED\s+AGE$/m);
  t.regex(table, /^columns\s+1\.4\.0\s/m);
  t.regex(await cluster.plane.kubectlOk(['get', 'osup', '-o', 'wide']), /MAX-UNAVAILABLE\s+PAUSED/, 'the short name and the wide columns');
  const explained = await cluster.plane.kubectlOk(['explain', 'osupgrade.spec.maxUnavailable']);
  t.regex(explained, /a count or a percentage/);
  t.regex(await cluster.plane.kubectlOk(['explain', 'osupgrade.spec']), /maintenanceWindows/);
});

const refused = test.macro(async (t, spec: Record<string, unknown>, field: string) => {
  const result = await cluster.plane.kubectl(['apply', '-f', '-'], { input: osupgrade('bad', spec) });
  t.is(result.exitCode, 1, result.stdout);
  t.true(result.stderr.includes(field), result.stderr);
  t.is((await cluster.plane.kubectl(['get', 'osupgrade', 'bad'])).exitCode, 1, 'nothing was stored');
});

test('the API server refuses a version that is not semver', refused, { version: 'latest' }, 'spec.version');
test('the API server refuses maxUnavailable "abc"', refused, { version: '1.4.0', maxUnavailable: 'abc' }, 'spec.maxUnavailable');
test('the API server refuses maxUnavailable 0', refused, { version: '1.4.0', maxUnavailable: 0 }, 'spec.maxUnavailable');
test('the API server refuses an unknown day', refused, { version: '1.4.0', maintenanceWindows: [{ days: ['Someday'], start: '22:00', end: '04:00' }] }, 'spec.maintenanceWindows[0].days[0]');
test('the API server refuses a time that is not HH:MM', refused, { version: '1.4.0', maintenanceWindows: [{ days: ['Mon'], start: '25:00', end: '04:00' }] }, 'spec.maintenanceWindows[0].start');

test('the CRD checks spec.version with the pattern kubeos uses everywhere', async (t) => {
  const crd = await readFile(new URL('../../deploy/crd-osupgrade.yaml', import.meta.url), 'utf8');
  const pattern = /version:\n\s+type: string\n\s+pattern: '([^']+)'/.exec(crd)?.[1];
  t.is(pattern, versionPattern.source);
});

/** kubectl auth can-i; "pods/eviction" names a subresource, "leases/NAME" an object. */
const can = async (kubeconfig: string, verb: string, resource: string, namespace?: string) => {
  const [kind = '', sub] = resource.split('/');
  const subresource = sub === 'eviction' || sub === 'status' ? ['--subresource', sub] : [];
  const target = subresource.length > 0 ? kind : resource;
  return (await cluster.plane.kubectl(['auth', 'can-i', verb, target, ...subresource, ...(namespace ? ['-n', namespace] : [])], { kubeconfig })).stdout.trim();
};

test('the operator may do what it does and nothing else', async (t) => {
  const op = cluster.operatorKubeconfig;
  for (const [verb, resource, ns] of [
    ['patch', 'nodes'], ['watch', 'nodes'], ['list', 'pods'], ['create', 'pods/eviction'], ['create', 'events'],
    ['patch', 'osupgrades.kubeos.io'], ['patch', 'osupgrades.kubeos.io/status'], ['create', 'leases.coordination.k8s.io', systemNamespace],
    ['watch', 'osconfigs.kubeos.io'], ['patch', 'osconfigs.kubeos.io'], ['patch', 'osconfigs.kubeos.io/status'],
    ['update', 'leases.coordination.k8s.io/kubeos-operator', systemNamespace],
  ] as const) t.is(await can(op, verb, resource, ns), 'yes', `${verb} ${resource}`);
  for (const [verb, resource, ns] of [
    ['delete', 'pods'], ['delete', 'nodes'], ['create', 'osupgrades.kubeos.io'], ['get', 'secrets', 'default'],
    ['update', 'leases.coordination.k8s.io/other-lease', systemNamespace], ['patch', 'daemonsets.apps', systemNamespace],
    ['update', 'osupgrades.kubeos.io/status'], ['create', 'pods'], ['create', 'osconfigs.kubeos.io'], ['delete', 'osconfigs.kubeos.io'],
  ] as const) t.is(await can(op, verb, resource, ns), 'no', `${verb} ${resource}`);
  // and for real: the API server refuses it
  const result = await cluster.plane.kubectl(['delete', 'node', 'node-b', '--dry-run=server'], { kubeconfig: op });
  t.is(result.exitCode, 1);
  t.regex(result.stderr, /forbidden/);
});

const agentPatch = async (node: string, patch: Record<string, unknown>) =>
  cluster.plane.kubectl(['patch', 'node', node, '--type=merge', '-p', JSON.stringify(patch)], { kubeconfig: agentOnA });

test('the agent with a token bound to its pod on node-a may set its own annotations on node-a', async (t) => {
  const result = await agentPatch('node-a', { metadata: { annotations: { [annotations.state]: 'idle', [annotations.currentVersion]: '1.0.0' } } });
  t.is(result.exitCode, 0, result.stderr);
  const node = await cluster.core.readNode({ name: 'node-a' });
  t.is(node.metadata?.annotations?.[annotations.state], 'idle');
});

test('the agent may report its configuration in its own annotations, and read OSConfigs but not change them', async (t) => {
  const result = await agentPatch('node-a', { metadata: { annotations: { [configAnnotations.state]: 'committed', [configAnnotations.applied]: 'config-0123456789abcdef', [configAnnotations.stateFor]: 'config-0123456789abcdef' } } });
  t.is(result.exitCode, 0, result.stderr);
  const refused = await agentPatch('node-a', { metadata: { annotations: { [configAnnotations.desired]: 'config-0123456789abcdef' } } });
  t.is(refused.exitCode, 1);
  t.regex(refused.stderr, /only change the kubeos\.io annotations it owns/);
  t.is(await can(agentOnA, 'get', 'osconfigs.kubeos.io'), 'yes');
  for (const verb of ['list', 'patch', 'create', 'delete']) t.is(await can(agentOnA, verb, 'osconfigs.kubeos.io'), 'no', verb);
});

test('the agent may not patch another node', async (t) => {
  const result = await agentPatch('node-b', { metadata: { annotations: { [annotations.state]: 'idle' } } });
  t.is(result.exitCode, 1);
  t.regex(result.stderr, /kubeos-agent-own-node/);
  t.regex(result.stderr, /only patch its own Node/);
});

test('the agent may not set the operator\'s annotations, labels or spec on its own node', async (t) => {
  for (const patch of [
    { metadata: { annotations: { [annotations.desiredVersion]: '9.9.9' } } },
    { metadata: { labels: { 'kubeos.io/managed': 'false' } } },
    { spec: { unschedulable: true } },
  ]) {
    const result = await agentPatch('node-a', patch);
    t.is(result.exitCode, 1, JSON.stringify(patch));
    t.regex(result.stderr, /only change the kubeos\.io annotations it owns/, JSON.stringify(patch));
  }
  const node = await cluster.core.readNode({ name: 'node-a' });
  t.is(node.metadata?.annotations?.[annotations.desiredVersion], undefined);
  t.not(node.spec?.unschedulable, true);
});

test('a token of the agent\'s service account that is not bound to a pod may patch no node', async (t) => {
  const unbound = await cluster.plane.serviceAccountKubeconfig(systemNamespace, 'kubeos-agent');
  const result = await cluster.plane.kubectl(['patch', 'node', 'node-a', '--type=merge', '-p', JSON.stringify({ metadata: { annotations: { [annotations.state]: 'idle' } } })], { kubeconfig: unbound });
  t.is(result.exitCode, 1);
  t.regex(result.stderr, /only patch its own Node/);
});

test('the agent DaemonSet mounts every host path the image\'s agent.json names, and runs in cluster mode', async (t) => {
  const ds = JSON.parse(await cluster.plane.kubectlOk(['get', 'daemonset', '-n', systemNamespace, 'kubeos-agent', '-o', 'json'])) as Record<string, any>;
  const container = ds['spec'].template.spec.containers[0];
  const mounts = (container.volumeMounts as Array<{ mountPath: string }>).map((m) => m.mountPath);
  const covered = (path: string) => mounts.some((m) => path === m || path.startsWith(`${m}/`));
  for (const path of [...Object.values(imageAgentPaths), agentConfigPath, '/dev']) t.true(covered(path), `${path} is mounted`);
  t.true(ds['spec'].template.spec.hostPID, 'hostPID: the reboot goes through PID 1');
  t.true(container.securityContext.privileged);
  t.deepEqual(container.args.slice(0, 2), ['agent', 'daemon']);
  t.true(container.args.includes('--kubernetes') && container.args.includes('--host-namespaces'));
});
