/**
 * The agent killed with SIGKILL at many points of a DELTA install, as a separate process: the
 * booted slot (the seed) and the boot environment are untouched whatever the point, and the next
 * install, a delta again, completes. Between runs the lock in /run is cleared, as a reboot does.
 */
import test from 'ava';
import { execa } from 'execa';
import { readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { readSlot, sha256 } from './host-fixture.js';
import { imageSize, makeDeltaHost, missingChunks } from './delta-fixture.js';

const agentBin = fileURLToPath(new URL('../../dist/runtime/agent/cli/main.js', import.meta.url));

type KillPoint = { kind: 'chunk-request'; n: number } | { kind: 'stderr'; pattern: RegExp };

test('SIGKILL at many points of a delta install leaves the booted slot and the boot environment untouched, and the next delta install succeeds', async (t) => {
  t.timeout(5 * 60_000);
  const { host, v2, imageSha256, channelUrl, server } = await makeDeltaHost(t, { regions: 12 });
  const missing = await missingChunks(host, v2);
  t.true(missing.length >= 8, `${missing.length} missing chunks`);
  const envBefore = await readFile(host.bootEnv);
  server.chunkDelayMs = 40;
  const killPoints: KillPoint[] = [
    { kind: 'stderr', pattern: /delta: / },
    ...[1, 2, Math.floor(missing.length / 2), missing.length - 1, missing.length].map((n): KillPoint => ({ kind: 'chunk-request', n })),
    { kind: 'stderr', pattern: /writing slot B/ },
    { kind: 'stderr', pattern: /reading back slot B/ },
  ];
  const outcomes: string[] = [];
  for (const [index, point] of killPoints.entries()) {
    await rm(join(host.runDir, 'agent.lock'), { recursive: true, force: true });
    const child = execa('node', [agentBin, 'agent', 'upgrade', '--config', host.configPath, '--channel', channelUrl, '--no-reboot'], { reject: false, buffer: false, stderr: 'pipe' });
    const kill = () => child.kill('SIGKILL');
    const requestsAtStart = server.requests.filter((r) => r.path.startsWith('chunks/')).length;
    if (point.kind === 'chunk-request') {
      let seen = 0;
      server.onChunkRequest = () => {
        if (++seen >= point.n) {
          server.onChunkRequest = undefined;
          kill();
        }
      };
    } else {
      child.stderr?.on('data', (data: Buffer) => {
        if (point.pattern.test(data.toString())) kill();
      });
    }
    const result = await child;
    server.onChunkRequest = undefined;
    outcomes.push(`${result.signal === "SIGKILL" ? "killed" : `exit ${result.exitCode}`} after ${server.requests.filter((r) => r.path.startsWith("chunks/")).length - requestsAtStart} of ${missing.length}`);
    // the boot environment may have been rewritten to forget the standby; here it named none, so it is as it was
    t.true((await readFile(host.bootEnv)).equals(envBefore), `run ${index} (${outcomes.join(", ")}): the boot environment is untouched: ${JSON.stringify(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))))}`);
    t.is(sha256(await readSlot(host, 'A')), host.v1Sha256, `run ${index}: the booted slot (the seed) is untouched`);
  }
  t.log(outcomes.join(', '));
  t.true(outcomes.filter((o) => o.startsWith('killed')).length >= killPoints.length - 1, outcomes.join(', '));

  await rm(join(host.runDir, 'agent.lock'), { recursive: true, force: true });
  server.chunkDelayMs = 0;
  const done = await execa('node', [agentBin, 'agent', 'upgrade', '--config', host.configPath, '--channel', channelUrl, '--no-reboot', '--json'], { reject: false });
  t.is(done.exitCode, 0, done.stderr);
  const report = JSON.parse(done.stdout) as { kind: string; transfer: { mode: string; fetchedBytes: number; reusedBytes: number; fetchedChunks: number } };
  t.like(report, { kind: 'installed', transfer: { mode: 'delta', fetchedChunks: missing.length } });
  t.true(report.transfer.reusedBytes > imageSize / 2);
  t.deepEqual(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))), { good: 'A', trying: 'B', triesLeft: 3, failed: undefined });
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});
