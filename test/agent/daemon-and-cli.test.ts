/** `kubeos agent daemon` on a file-backed host, and the agent CLI's errors. */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { runDaemon } from '../../runtime/agent/run-daemon.js';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { jsonError, kubeos } from '../helpers/cli.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { bootInto, makeHost, makeV2 } from './host-fixture.js';

test('the daemon commits a trial boot, then installs the newer version the channel offers, one log line per change', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  const server = await startUpdateServer(t, site);
  const channel = `${server.url}/channels/stable.json`;
  // a trial boot of 2.0.0 in B, after an upgrade from A
  await upgrade(host.config, { bundle: (await makeV2(host)).path, reboot: false });
  await bootInto(host, 'B', 'trying', '2.0.0');
  await publishToDir(site, await makeV2(host, { version: '3.0.0', name: 'v3' }), host.keys.privateKey, { serial: 1 });
  const lines: string[] = [];
  await runDaemon({ ...host.config, reboot: ['true'] }, { channel, signal: new AbortController().signal, log: (line) => lines.push(line), polls: 1 });
  t.deepEqual(lines.map((l) => l.replace(/every \d+s.*$/, 'every …')), [
    'committed slot B (version 2.0.0)',
    `polling ${channel} every …`,
    'installed 3.0.0 into slot A; rebooting',
  ]);
  t.deepEqual(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))), { good: 'B', trying: 'A', triesLeft: 3, failed: undefined });
});

test('agent status prints JSON for machines through the CLI', async (t) => {
  const host = await makeHost(t);
  const result = await kubeos(['agent', 'status', '--config', host.configPath, '--json']);
  t.is(result.exitCode, 0, result.stderr);
  t.like(result.json, { booted: 'A', bootKind: 'good', version: '1.0.0', fellBack: false, slots: { A: { state: 'good' }, B: { state: 'empty' } } });
});

test('agent commands name a missing configuration file', async (t) => {
  const result = await kubeos(['agent', 'status', '--config', '/nonexistent/agent.json', '--json']);
  t.is(result.exitCode, 2);
  t.is(jsonError(result.stdout).code, 'E_USAGE');
});

test('agent upgrade with both --channel and --bundle is a usage error that changes nothing', async (t) => {
  const host = await makeHost(t);
  const before = await readFile(host.bootEnv);
  const result = await kubeos(['agent', 'upgrade', '--config', host.configPath, '--channel', 'http://127.0.0.1:9/c.json', '--bundle', '/tmp/x', '--json']);
  t.is(result.exitCode, 2);
  t.is(jsonError(result.stdout).code, 'E_USAGE');
  t.deepEqual(await readFile(host.bootEnv), before);
});

test('on a cluster node the daemon commits the trial boot but follows no channel', async (t) => {
  const host = await makeHost(t, { channel: 'https://127.0.0.1:9/kubeos/channels/stable.json' });
  const lines: string[] = [];
  await runDaemon({ ...host.config, updates: 'cluster' }, { signal: new AbortController().signal, log: (line) => lines.push(line) });
  t.deepEqual(lines, ['updates come from the cluster (agent config updates: cluster): not following a channel']);
});

test('agent daemon --kubernetes on a host that follows its channel is refused: one updater per node', async (t) => {
  const host = await makeHost(t);
  const result = await kubeos(['agent', 'daemon', '--kubernetes', '--node-name', 'node-a', '--config', host.configPath, '--json']);
  t.is(result.exitCode, 2);
  t.is(jsonError(result.stdout).code, 'E_USAGE');
  t.like(jsonError(result.stdout).details, { updates: 'channel' });
});
