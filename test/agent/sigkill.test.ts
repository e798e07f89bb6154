/**
 * The agent killed with SIGKILL at many points of an upgrade, as a separate process: whatever
 * the point, the boot environment names a good slot whose content verifies, and a slot on trial
 * is one that verifies too. Between runs the lock in /run is cleared, as a reboot does.
 */
import test from 'ava';
import { execa } from 'execa';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { makeHost, makeV2, readSlot, sha256 } from './host-fixture.js';

const agentBin = fileURLToPath(new URL('../../dist/runtime/agent/cli/main.js', import.meta.url));

type KillPoint = { kind: 'bytes'; fraction: number } | { kind: 'stderr'; pattern: RegExp } | { kind: 'at-start' };

const killPoints: KillPoint[] = [
  { kind: 'at-start' },
  ...Array.from({ length: 16 }, (_, i): KillPoint => ({ kind: 'bytes', fraction: i / 16 })),
  { kind: 'stderr', pattern: /verifying/ },
  { kind: 'stderr', pattern: /writing slot B/ },
  { kind: 'stderr', pattern: /reading back slot B/ },
  { kind: 'stderr', pattern: /reading back slot B/ },
  { kind: 'bytes', fraction: 0.99 },
];

test('SIGKILL at 22 points of an upgrade always leaves a boot environment naming slots that verify', async (t) => {
  t.timeout(5 * 60_000);
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  const site = join(host.dir, 'site');
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1 });
  const server = await startUpdateServer(t, site);
  server.slow = true;
  const outcomes: string[] = [];

  for (const [index, point] of killPoints.entries()) {
    await rm(join(host.runDir, 'agent.lock'), { recursive: true, force: true });
    const child = execa('node', [agentBin, 'agent', 'upgrade', '--config', host.configPath, '--channel', `${server.url}/channels/stable.json`, '--no-reboot', '--allow-downgrade'], { reject: false, buffer: false, stderr: 'pipe' });
    const kill = () => child.kill('SIGKILL');
    if (point.kind === 'at-start') kill();
    if (point.kind === 'bytes') {
      server.onBundleBytes = (sent) => {
        if (sent >= point.fraction * v2.size) {
          server.onBundleBytes = undefined;
          kill();
        }
      };
    }
    if (point.kind === 'stderr') {
      child.stderr?.on('data', (data: Buffer) => {
        if (point.pattern.test(data.toString())) kill();
      });
    }
    const result = await child;
    server.onBundleBytes = undefined;
    outcomes.push(result.signal === 'SIGKILL' ? 'killed' : `exit ${result.exitCode}`);

    const env = bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv)));
    t.is(env.good, 'A', `run ${index}: the good slot is the booted one`);
    t.is(sha256(await readSlot(host, 'A')), host.v1Sha256, `run ${index}: slot A is untouched`);
    if (env.trying !== undefined) {
      t.is(env.trying, 'B', `run ${index}`);
      t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), v2.manifest.payload.uncompressedSha256, `run ${index}: a slot on trial verifies`);
    }
  }
  t.log(outcomes.join(', '));
  // and after all that, an upgrade left alone completes on the same host
  await rm(join(host.runDir, 'agent.lock'), { recursive: true, force: true });
  const done = await execa('node', [agentBin, 'agent', 'upgrade', '--config', host.configPath, '--channel', `${server.url}/channels/stable.json`, '--no-reboot', '--allow-downgrade', '--json'], { reject: false });
  t.is(done.exitCode, 0, done.stderr);
  const env = bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv)));
  t.deepEqual(env, { good: 'A', trying: 'B', triesLeft: 3, failed: undefined });
  t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), v2.manifest.payload.uncompressedSha256);
  t.true(outcomes.filter((o) => o === 'killed').length >= 20, outcomes.join(', '));
});
