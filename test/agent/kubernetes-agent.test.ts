/**
 * `kubeos agent daemon --kubernetes` (runKubernetesAgent) on a file-backed host, against a REAL API
 * server with the agent's own credentials (a service-account token bound to its pod on its node):
 * the desired version set on the Node is resolved in the signed channel of the host's own image
 * server, installed exactly, with progress on the Node; a version the channel does not list, and a
 * channel that is not a name, fail on the node with the reason reported back.
 */
import anyTest, { type ExecutionContext, type TestFn } from 'ava';
import { runKubernetesAgent } from '../../runtime/agent/run-kubernetes-agent.js';
import { annotations } from '../../runtime/fleet/node-protocol.js';
import { OperatorCluster } from '../operator/cluster-fixture.js';
import { makeHost, readSlot, serveTwoReleases, sha256 } from './host-fixture.js';

const test = anyTest as TestFn<unknown>;
let cluster: OperatorCluster;

test.before(async () => {
  cluster = await OperatorCluster.start({ controllerManager: false });
});
test.after.always(async () => {
  await cluster?.stop();
});

/** A Node, its agent's pod and token, and a host whose image server offers 3.0.0 (current) and 2.0.0. */
async function node(t: ExecutionContext, name: string) {
  await cluster.addNode(name);
  const kubeconfig = await cluster.addAgent(name);
  const host = await makeHost(t);
  const { v2, v3, server } = await serveTwoReleases(t, host);
  const abort = new AbortController();
  const log: string[] = [];
  const running = runKubernetesAgent({ ...host.config, updateServer: `${server.url}/`, reboot: ['true'] }, { nodeName: name, kubeconfig, signal: abort.signal, log: (line) => log.push(line) });
  t.teardown(async () => {
    abort.abort();
    await running;
  });
  await cluster.mirror.waitFor(`the agent on ${name} to report in`, () => cluster.mirror.get('nodes', name)?.['metadata'].annotations?.[annotations.state] === 'idle');
  // every value the progress annotation takes, as the watch delivers them
  const progress = new Set<string>();
  const seen = () => {
    const value = cluster.mirror.get('nodes', name)?.['metadata'].annotations?.[annotations.progress];
    if (value !== undefined) progress.add(value);
  };
  cluster.mirror.activity.on('change', seen);
  t.teardown(() => void cluster.mirror.activity.off('change', seen));
  return { host, v2, v3, server, progress, log };
}

const desire = (name: string, version: string, channel = 'stable') =>
  cluster.patchNode(name, { metadata: { annotations: { [annotations.desiredVersion]: version, [annotations.desiredChannel]: channel } } });
const nodeAnnotations = (name: string) => cluster.mirror.annotations(name);

test.serial('the agent installs exactly the desired version from the signed channel, with progress on its Node', async (t) => {
  const n = await node(t, 'node-a');
  await desire('node-a', '2.0.0');
  await cluster.mirror.waitFor('the agent to reboot into 2.0.0', () => nodeAnnotations('node-a')[annotations.state] === 'rebooting', 30_000);
  t.like(nodeAnnotations('node-a'), { [annotations.stateVersion]: '2.0.0', [annotations.currentVersion]: '1.0.0' });
  t.is(sha256(await readSlot(n.host, 'B', n.v2.manifest.payload.uncompressedSize)), n.v2.manifest.payload.uncompressedSha256, 'slot B holds 2.0.0, not the newer 3.0.0');
  t.false(n.server.requests.some((r) => r.path === `bundles/${n.v3.sha256}.kubeos`));
  const total = n.v2.manifest.payload.uncompressedSize;
  t.true(n.progress.has(`${total}/${total}`), `progress seen: ${[...n.progress].join(', ')}`);
  t.is(nodeAnnotations('node-a')[annotations.progress], undefined, 'no progress once the install is done');
});

test.serial('a version the signed channel does not list fails on the node before its standby slot is opened', async (t) => {
  const n = await node(t, 'node-b');
  const standby = sha256(await readSlot(n.host, 'B'));
  await desire('node-b', '9.9.9');
  await cluster.mirror.waitFor('the agent to fail', () => nodeAnnotations('node-b')[annotations.state] === 'failed', 30_000);
  t.is(nodeAnnotations('node-b')[annotations.stateVersion], '9.9.9');
  t.regex(nodeAnnotations('node-b')[annotations.lastError] ?? '', /^E_VERSION_NOT_OFFERED: channel stable does not offer version 9\.9\.9/);
  t.false(n.server.requests.some((r) => r.path.startsWith('bundles/')), 'no bundle fetched');
  t.is(sha256(await readSlot(n.host, 'B')), standby, 'the standby slot is untouched');
});

test.serial('a desired channel that is not a name (a URL of another server) is refused on the node', async (t) => {
  const n = await node(t, 'node-c');
  await desire('node-c', '2.0.0', 'https://evil.example/channels/stable.json');
  await cluster.mirror.waitFor('the agent to fail', () => nodeAnnotations('node-c')[annotations.state] === 'failed', 30_000);
  t.regex(nodeAnnotations('node-c')[annotations.lastError] ?? '', /^E_USAGE: kubeos\.io\/desired-channel .* is not a channel name/);
  t.deepEqual(n.server.requests, [], 'the host never contacted any server');
});
