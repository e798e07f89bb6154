/** Shared pieces of `npm run bench`: timing, peak RSS of a child, and the row every bench returns. */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';

export const MiB = 1024 * 1024;

export interface BenchRow {
  /** What was measured, e.g. "build images/minimal". */
  name: string;
  /** The baseline measured in the same run, e.g. "mke2fs -d on the same tree". */
  baseline: string;
  value: number;
  baselineValue: number;
  unit: 's' | 'MiB' | 'ms' | 'x';
  /** value / baselineValue; lower is better unless stated in the name. */
  ratio: number;
  note?: string;
}

export type Bench = () => Promise<BenchRow[]>;

export async function timeIt<T>(fn: () => Promise<T>): Promise<{ seconds: number; value: T }> {
  const start = performance.now();
  const value = await fn();
  return { seconds: (performance.now() - start) / 1000, value };
}

/** The middle value (the upper middle of an even count). */
export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

/** Every run's seconds, for a row's note: "1.23/1.31/1.19". */
export function runs(values: readonly number[]): string {
  return values.map((v) => v.toFixed(2)).join('/');
}

export function row(name: string, baseline: string, value: number, baselineValue: number, unit: BenchRow['unit'], note?: string): BenchRow {
  return { name, baseline, value, baselineValue, unit, ratio: baselineValue === 0 ? Number.NaN : value / baselineValue, note };
}

/** Up to 8 MiB of real executables to make the "binary" blocks compress like a rootfs would. */
export async function loadBinarySample(): Promise<Buffer> {
  const parts: Buffer[] = [];
  let total = 0;
  for (const name of (await readdir('/usr/bin')).sort()) {
    if (total >= 8 * MiB) break;
    try {
      const data = await readFile(join('/usr/bin', name));
      parts.push(data);
      total += data.length;
    } catch {
      // not a readable file
    }
  }
  return Buffer.concat(parts).subarray(0, 8 * MiB);
}

/** An image like a filesystem with free space: incompressible, binary and zero blocks. */
export async function writeImage(path: string, size: number, sample: Buffer): Promise<void> {
  async function* blocks() {
    for (let i = 0; i < size / MiB; i++) {
      const kind = i % 4;
      const at = (i * MiB) % (sample.length - MiB);
      if (kind === 0) yield randomBytes(MiB);
      else if (kind === 3) yield Buffer.alloc(MiB);
      else yield sample.subarray(at, at + MiB);
    }
  }
  await pipeline(blocks, createWriteStream(path));
}

/**
 * Runs a bench child script (node) that prints `{ seconds, maxRssMiB }` as its last line. Peak RSS
 * comes from the child's own VmHWM: getrusage's maxRSS inherits the parent's RSS at fork on Linux.
 */
/** `nodeFlags`: options for node itself, before the script (the agent's, as an image runs it). */
export async function runChild<T extends { seconds: number; maxRssMiB: number } = { seconds: number; maxRssMiB: number }>(script: string, args: string[], nodeFlags: readonly string[] = []): Promise<T> {
  const result = await execa(process.execPath, [...nodeFlags, script, ...args], { timeout: 10 * 60_000, reject: false });
  if (result.exitCode !== 0) throw new Error(`bench child ${script} ${args[0] ?? ''} failed: ${String(result.stderr) || String(result.exitCode)}`);
  const last = String(result.stdout).trim().split('\n').at(-1) ?? '';
  return JSON.parse(last) as T;
}

/** User + system time of the children this process waited for (/proc/self/stat cutime, cstime; 100 ticks a second). */
export async function childCpuSeconds(): Promise<number> {
  const stat = await readFile('/proc/self/stat', 'utf8');
  // the fields after the command name, which is in parentheses and may hold spaces
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[13]) + Number(fields[14])) / 100;
}

/** Peak RSS of this process so far (for bench children). */
export async function peakRssMiB(): Promise<number> {
  const status = await readFile('/proc/self/status', 'utf8');
  return Number(/^VmHWM:\s+(\d+) kB/m.exec(status)?.[1] ?? Number.NaN) / 1024;
}
