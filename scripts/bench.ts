/**
 * `npm run bench`: every speed and memory target of kubeos, each printed as a ratio against a
 * baseline measured in the same run on the same machine. `--json` prints the rows for CI.
 * `--only NAME` runs the benches whose module name contains NAME (`--only delta` runs delta and
 * delta-install).
 */
import type { Bench, BenchRow } from './bench/measure.js';

const benches: Record<string, () => Promise<{ bench: Bench }>> = {
  bundle: () => import('./bench/bundle.js'),
  build: () => import('./bench/build.js'),
  agent: () => import('./bench/agent.js'),
  startup: () => import('./bench/startup.js'),
  operator: () => import('./bench/operator.js'),
  'operator-cluster': () => import('./bench/operator-cluster.js'),
  unpack: () => import('./bench/unpack.js'),
  delta: () => import('./bench/delta.js'),
  // builds a 1 GiB root twice and images/debian from two suites: several minutes
  'delta-install': () => import('./bench/delta-install.js'),
  // last: it boots three QEMU guests and takes several minutes
  fleet: () => import('./bench/fleet.js'),
};

const args = process.argv.slice(2);
const json = args.includes('--json');
const onlyIndex = args.indexOf('--only');
const only = onlyIndex >= 0 ? args[onlyIndex + 1] : undefined;

const fmt = (v: number) => (Number.isFinite(v) ? v.toFixed(v < 10 ? 3 : 1) : String(v));
const print = (r: BenchRow) =>
  process.stdout.write(`${r.name}: ${fmt(r.value)} ${r.unit} | baseline ${r.baseline}: ${fmt(r.baselineValue)} ${r.unit} | ratio ${fmt(r.ratio)}x${r.note ? ` (${r.note})` : ''}\n`);

// rows print as each bench finishes, and one failing bench does not hide the others
const rows: BenchRow[] = [];
const failed: string[] = [];
for (const [name, load] of Object.entries(benches)) {
  if (only !== undefined && !name.includes(only)) continue;
  process.stderr.write(`bench: ${name}...\n`);
  try {
    const { bench } = await load();
    const produced = await bench();
    rows.push(...produced);
    if (!json) produced.forEach(print);
  } catch (error) {
    failed.push(name);
    process.stderr.write(`bench: ${name} failed: ${(error instanceof Error ? error.message : String(error)).slice(0, 2000)}\n`);
  }
}

if (json) process.stdout.write(`${JSON.stringify({ rows, failed }, null, 2)}\n`);
if (failed.length > 0) process.exitCode = 1;
