/** `kubeos agent daemon` on a file-backed host, and the agent CLI's errors. */
import test, { type ExecutionContext } from 'ava';
import { execa } from 'execa';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { runDaemon } from '../../runtime/agent/run-daemon.js';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { jsonError, kubeos } from '../helpers/cli.js';
import { bundleDownloads, publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { status } from '../../runtime/agent/commit-rollback-status.js';
import { bootInto, makeHost, makeV2, snapshot, type Host } from './host-fixture.js';

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
  t.like(result.json, { booted: 'A', bootKind: 'good', version: '1.0.0', fellBack: false, slots: { A: { state: 'good' }, B: { state: 'empty' } }, config: { committed: 0 } });
  const human = await kubeos(['agent', 'status', '--config', host.configPath]);
  t.regex(human.stdout, /^configuration: none committed$/m);
});

/** A host whose reboot command SIGKILLs the agent that ran it: init's SIGTERM at shutdown, without the grace. */
async function makeHostKilledByReboot(t: ExecutionContext): Promise<{ host: Host; configPath: string }> {
  const host = await makeHost(t);
  const raw = JSON.parse(await readFile(host.configPath, 'utf8')) as Record<string, unknown>;
  const killParent = join(host.dir, 'kill-parent.mjs');
  await writeFile(killParent, "process.kill(process.ppid, 'SIGKILL');\n");
  const configPath = join(host.dir, 'killing-reboot.json');
  await writeFile(configPath, JSON.stringify({ ...raw, reboot: [process.execPath, killParent] }));
  return { host, configPath };
}

test('agent upgrade prints its result before the reboot command runs: a reboot that ends the agent at once loses no report', async (t) => {
  // the agent is killed holding its lock: a host for each form
  const json = await makeHostKilledByReboot(t);
  const result = await kubeos(['agent', 'upgrade', '--config', json.configPath, '--bundle', (await makeV2(json.host)).path, '--json']);
  t.like(result.json, { kind: 'installed', version: '2.0.0', slot: 'B', rebooting: true, transfer: { mode: 'full' } }, result.stdout + result.stderr);
  const text = await makeHostKilledByReboot(t);
  const human = await kubeos(['agent', 'upgrade', '--config', text.configPath, '--bundle', (await makeV2(text.host)).path]);
  t.regex(human.stdout, /^installed 2\.0\.0 into slot B .*; rebooting\n {2}full bundle: fetched \d+ bytes/m, human.stderr);
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

const racing = test.macro(async (t, n: number) => {
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  const site = join(host.dir, 'site');
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1 });
  const server = await startUpdateServer(t, site);
  // the download that holds the lock waits until every other process has ended: they all overlap
  let ended = 0;
  let open!: () => void;
  server.gate = new Promise((resolve) => {
    open = resolve;
  });
  const results = await Promise.all(Array.from({ length: n }, () =>
    kubeos(['agent', 'upgrade', '--config', host.configPath, '--channel', `${server.url}/channels/stable.json`, '--no-reboot', '--json']).then((r) => {
      if (++ended === n - 1) open();
      return r;
    })));
  const before = { slotA: host.v1Sha256 };
  const outcomes = results.map((r) => (r.exitCode === 0 ? 'installed' : `${r.exitCode} ${jsonError(r.stdout).code}`)).sort();
  t.deepEqual(outcomes, ['installed', ...Array.from({ length: n - 1 }, () => '1 E_LOCKED')].sort(), results.map((r) => r.stderr).join('\n'));
  t.is((await snapshot(host)).slotA, before.slotA, 'the active slot is untouched');
  t.is(bundleDownloads(server).length, 1, 'one download');
  t.like(await status(host.config), { slots: { B: { state: 'trying', version: '2.0.0' } } });
});
for (const n of [2, 3, 5]) test(`${n} agent upgrades started at once: one installs, ${n - 1} get E_LOCKED, none crashes`, racing, n);

test('a damaged state file is reported naming it, never read as a fresh host, and left as it was', async (t) => {
  const host = await makeHost(t);
  await upgrade(host.config, { bundle: (await makeV2(host)).path, reboot: false });
  const file = join(host.dir, 'state', 'state.json');
  const torn = (await readFile(file)).subarray(0, 40);
  await writeFile(file, torn);
  for (const args of [['agent', 'status'], ['agent', 'upgrade', '--bundle', join(host.dir, 'v2.kubeos'), '--no-reboot']]) {
    const result = await kubeos([...args, '--config', host.configPath, '--json']);
    t.is(result.exitCode, 1, args.join(' '));
    const error = jsonError(result.stdout);
    t.is(error.code, 'E_STATE_CORRUPT');
    t.true(error.message.includes(file), error.message);
  }
  t.deepEqual(await readFile(file), torn);
});

test('agent daemon --json logs one JSON object per line, as operator run --json does', async (t) => {
  const host = await makeHost(t);
  const raw = JSON.parse(await readFile(host.configPath, 'utf8')) as Record<string, unknown>;
  const configPath = join(host.dir, 'cluster-agent.json');
  await writeFile(configPath, JSON.stringify({ ...raw, updates: 'cluster' }));
  const result = await kubeos(['agent', 'daemon', '--config', configPath, '--json']);
  t.is(result.exitCode, 0, result.stderr);
  const lines = result.stdout.trim().split('\n').map((line) => JSON.parse(line) as { time: string; component: string; message: string });
  t.is(lines.length, 1);
  t.like(lines[0], { component: 'kubeos-agent', message: 'updates come from the cluster (agent config updates: cluster): not following a channel' });
  t.false(Number.isNaN(Date.parse(lines[0]!.time)));
});

test('the daemon logs an install before its reboot command runs: a reboot that ends the daemon at once loses no line', async (t) => {
  // logged only after the reboot returns (as it was), the line would never come: fail, not hang
  t.timeout(60_000);
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  const server = await startUpdateServer(t, site);
  await publishToDir(site, await makeV2(host), host.keys.privateKey, { serial: 1 });
  // the reboot command blocks on a FIFO until the test has seen the line
  const fifo = join(host.dir, 'reboot.fifo');
  await execa('mkfifo', [fifo]);
  const lines: string[] = [];
  let seen: () => void = () => {};
  const logged = new Promise<void>((resolve) => (seen = resolve));
  const daemon = runDaemon({ ...host.config, reboot: ['cat', fifo] }, {
    channel: `${server.url}/channels/stable.json`,
    signal: new AbortController().signal,
    polls: 1,
    log: (line) => {
      lines.push(line);
      if (line.startsWith('installed')) seen();
    },
  });
  await logged;
  t.true(lines.includes('installed 2.0.0 into slot B; rebooting'), lines.join('\n'));
  // the reboot has not returned yet: release it, and the line is not logged twice
  await writeFile(fifo, '');
  await daemon;
  t.is(lines.filter((l) => l.startsWith('installed')).length, 1, lines.join('\n'));
});
