/**
 * The fleet rollout's makespan against its bound: qemu-tests/fleet.test.ts's first test (three QEMU
 * nodes of a real control plane, OSUpgrade to v2 with maxUnavailable 1) run alone, reporting its
 * times to a file. The bound is ceil(N / maxUnavailable) x the slowest node's time, both measured
 * in that run: a ratio above 1 means the operator lost time between nodes.
 */
import { readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { projectRoot } from '../../builder/project-root.js';
import { row, type Bench } from './measure.js';

interface FleetTiming {
  makespanMs: number;
  boundMs: number;
  slowestMs: number;
  nodes: number;
  maxUnavailable: number;
}

export const bench: Bench = async () => {
  const file = join(tmpdir(), `kubeos-fleet-timing-${process.pid}.json`);
  try {
    const result = await execa('npx', ['ava', 'qemu-tests/fleet.test.ts', '--match', 'OSUpgrade to v2*'], {
      cwd: projectRoot(), env: { KUBEOS_FLEET_TIMING: file }, reject: false, all: true, timeout: 40 * 60_000,
    });
    if (result.exitCode !== 0) throw new Error(`the fleet test failed (exit ${result.exitCode}):\n${String(result.all).slice(-3000)}`);
    const timing = JSON.parse(await readFile(file, 'utf8')) as FleetTiming;
    return [row(
      `fleet rollout makespan, ${timing.nodes} QEMU nodes, maxUnavailable ${timing.maxUnavailable}`,
      `ceil(${timing.nodes}/${timing.maxUnavailable}) x slowest node (${(timing.slowestMs / 1000).toFixed(1)} s)`,
      timing.makespanMs / 1000, timing.boundMs / 1000, 's',
    )];
  } finally {
    await rm(file, { force: true });
  }
};
