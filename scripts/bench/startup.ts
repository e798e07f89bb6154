/**
 * The agent's start-up on a host: the program images carry (`/usr/lib/kubeos/agent/kubeos.mjs`,
 * bundled by the same code as for an image) running `agent status`, and `agent upgrade` up to its
 * first step (a bundle that is not there), against `node -e 0`, the floor of any Node program.
 * The difference is the CLI's own overhead; the goal is well under 100 ms.
 */
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { agentNodeFlags, bundleAgent } from '../../builder/rootfs/bundle-agent.js';
import { generateKeyPair } from '../../runtime/core/crypto/keys.js';
import { makeHost } from './agent.js';
import { median, row, timeIt, type Bench, type BenchRow } from './measure.js';

const rounds = 15;

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-startup-'));
  try {
    const program = join(dir, 'agent', 'kubeos.mjs');
    await bundleAgent(join(dir, 'agent'));
    const pub = join(dir, 'signing.pub.pem');
    await writeFile(pub, generateKeyPair().publicPem);
    const { config } = await makeHost(join(dir, 'host'), 1024 * 1024, pub);
    const commands = {
      floor: ['-e', '0'],
      // as /usr/bin/kubeos runs the program in an image
      status: [...agentNodeFlags(['agent', 'status']), program, 'agent', 'status', '--config', config, '--json'],
      upgrade: [...agentNodeFlags(['agent', 'upgrade']), program, 'agent', 'upgrade', '--bundle', join(dir, 'none.kubeos'), '--no-reboot', '--config', config],
    } as const;
    const seconds: Record<keyof typeof commands, number[]> = { floor: [], status: [], upgrade: [] };
    // alternating, so a busy moment of the machine lands on all three alike
    for (let round = 0; round < rounds; round++) {
      for (const [name, args] of Object.entries(commands) as [keyof typeof commands, readonly string[]][]) {
        const { value, seconds: s } = await timeIt(() => execa(process.execPath, args, { reject: false }));
        if (name === 'status' && value.exitCode !== 0) throw new Error(`agent status failed: ${String(value.stderr)}`);
        if (name === 'upgrade' && !String(value.stderr).includes('E_')) throw new Error(`agent upgrade did not reach its first check: ${String(value.stderr)}`);
        seconds[name].push(s);
      }
    }
    const floor = median(seconds.floor) * 1000;
    const rows: BenchRow[] = [];
    for (const name of ['status', 'upgrade'] as const) {
      const ms = median(seconds[name]) * 1000;
      rows.push(row(`agent ${name} start-up (the image's agent program)`, 'node -e 0', ms, floor, 'ms', `CLI overhead ${(ms - floor).toFixed(0)} ms (goal well under 100 ms); medians of ${rounds} alternating runs`));
    }
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
