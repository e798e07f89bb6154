/**
 * The agent killed with SIGKILL at many points of a DELTA install, as a separate process: the
 * booted slot (the seed) and the boot environment are untouched whatever the point, and the next
 * install, a delta again, completes and reads back from the standby what the killed one had
 * already written and verified instead of fetching it again. Each point starts from the same
 * host (slot B blank, no agent state); between the two runs the lock in /run is cleared, as a
 * reboot does.
 */
import test from 'ava';
import { execa } from 'execa';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { readSlot, sha256, slotOffsets, slotSize } from './host-fixture.js';
import { imageSize, makeDeltaHost, missingChunks } from './delta-fixture.js';

const agentBin = fileURLToPath(new URL('../../dist/runtime/agent/cli/main.js', import.meta.url));

type KillPoint = { kind: 'chunk-request'; n: number } | { kind: 'stderr'; match: (text: string) => boolean; label: string };

interface Report {
  kind: string;
  transfer: { mode: string; fetchedChunks: number; resumedChunks: number; reusedBytes: number };
}

test('SIGKILL at 25 points of a delta install leaves the booted slot and the boot environment untouched, and the next delta install reuses what the killed one verified', async (t) => {
  t.timeout(8 * 60_000);
  const { host, v2, imageSha256, channelUrl, server } = await makeDeltaHost(t, { regions: 24 });
  const missing = await missingChunks(host, v2);
  t.true(missing.length >= 18, `${missing.length} missing chunks`);
  const envBefore = await readFile(host.bootEnv);
  const stateDir = host.config.stateDir;
  const line = (pattern: RegExp, label: string): KillPoint => ({ kind: 'stderr', match: (text) => pattern.test(text), label });
  // the writer's progress lines: "writing slot B" with a percentage
  const writing = (percent: number): KillPoint => ({
    kind: 'stderr',
    match: (text) => [...text.matchAll(/writing slot B\D*?(\d+)%/g)].some((m) => Number(m[1]) >= percent),
    label: `writing ${percent}%`,
  });
  const killPoints: KillPoint[] = [
    line(/verifying/, 'verifying'),
    line(/delta: /, 'the plan'),
    ...Array.from({ length: 18 }, (_, i): KillPoint => ({ kind: 'chunk-request', n: Math.max(1, Math.round(((i + 1) * missing.length) / 18)) })),
    writing(10), writing(40), writing(70), writing(95),
    line(/reading back slot B/, 'reading back'),
  ];
  t.true(killPoints.length >= 25);
  const blank = Buffer.alloc(slotSize);
  const outcomes: string[] = [];
  let resumedTotal = 0;
  for (const point of killPoints) {
    // the same starting host for every point
    await rm(join(host.runDir, 'agent.lock'), { recursive: true, force: true });
    await rm(stateDir, { recursive: true, force: true });
    await writeFile(host.bootEnv, envBefore);
    const disk = await open(host.disk, 'r+');
    await disk.write(blank, 0, slotSize, slotOffsets.B);
    await disk.close();

    server.chunkDelayMs = 30;
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
        if (point.match(data.toString())) kill();
      });
    }
    const result = await child;
    server.onChunkRequest = undefined;
    const name = point.kind === 'chunk-request' ? `chunk request ${point.n}` : point.label;
    const killed = result.signal === 'SIGKILL';
    const requested = server.requests.filter((r) => r.path.startsWith('chunks/')).length - requestsAtStart;
    t.true((await readFile(host.bootEnv)).equals(envBefore) || !killed, `${name}: the boot environment is untouched: ${JSON.stringify(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))))}`);
    t.is(sha256(await readSlot(host, 'A')), host.v1Sha256, `${name}: the booted slot (the seed) is untouched`);

    // the next install, as after a reboot
    await rm(join(host.runDir, 'agent.lock'), { recursive: true, force: true });
    server.chunkDelayMs = 0;
    const next = await execa('node', [agentBin, 'agent', 'upgrade', '--config', host.configPath, '--channel', channelUrl, '--no-reboot', '--json'], { reject: false });
    if (!killed) {
      outcomes.push(`${name}: not killed (exit ${result.exitCode})`);
      continue;
    }
    t.is(next.exitCode, 0, `${name}: ${next.stderr}`);
    const report = JSON.parse(next.stdout) as Report;
    t.like(report, { kind: 'installed', transfer: { mode: 'delta' } }, name);
    // every chunk slot A lacks came from the store or from what the killed install left in slot B
    t.is(report.transfer.fetchedChunks + report.transfer.resumedChunks, missing.length, name);
    t.deepEqual(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))), { good: 'A', trying: 'B', triesLeft: 3, failed: undefined }, name);
    t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256, name);
    resumedTotal += report.transfer.resumedChunks;
    outcomes.push(`${name}: killed after ${requested} chunk requests, then ${report.transfer.resumedChunks} resumed + ${report.transfer.fetchedChunks} fetched`);
    // once everything was written, nothing is fetched again
    if (point.kind === 'stderr' && point.label === 'reading back') t.is(report.transfer.resumedChunks, missing.length, name);
  }
  t.log(outcomes.join('\n'));
  t.true(outcomes.filter((o) => o.includes('killed after')).length >= killPoints.length - 1, outcomes.join('\n'));
  t.true(resumedTotal > missing.length * 3, `${resumedTotal} chunks resumed over all points`);
});
