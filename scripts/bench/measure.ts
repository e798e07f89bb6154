/** Shared pieces of `npm run bench`: timing, peak RSS of a child, and the row every bench returns. */
import { performance } from 'node:perf_hooks';

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

export function row(name: string, baseline: string, value: number, baselineValue: number, unit: BenchRow['unit'], note?: string): BenchRow {
  return { name, baseline, value, baselineValue, unit, ratio: baselineValue === 0 ? Number.NaN : value / baselineValue, note };
}
