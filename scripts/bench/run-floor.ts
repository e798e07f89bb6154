/**
 * A bench floor: the real tools doing the same job in a shell of their own, with no Node process
 * in the data path. Piping curl into zstd through execa's `.pipe()` copies every byte through the
 * bench's event loop (and, when the bench is also the HTTP server, through the same thread
 * twice): that measured the bench, not the tools, and made the floor about 1.5x too slow.
 *
 * The script is a fixed string; everything that varies goes in as positional parameters ("$1"...),
 * so no path or URL is ever spliced into shell text. The time is taken inside the shell
 * ($EPOCHREALTIME around the body), like the kubeos bench children time themselves after start-up,
 * so neither side is charged its process start.
 */
import { execa } from 'execa';

export interface FloorOptions {
  env?: Record<string, string>;
  timeoutMs?: number;
}

export async function runFloor(script: string, args: readonly string[], options: FloorOptions = {}): Promise<number> {
  return (await runFloorMeasured(script, args, options)).seconds;
}

/** `times`' "1m2.345s" as seconds. */
function shellSeconds(text: string | undefined): number {
  const match = /^(\d+)m([\d.]+)s$/.exec(text ?? '');
  return match === null ? Number.NaN : Number(match[1]) * 60 + Number(match[2]);
}

/**
 * Also the CPU the script's processes used (user + system of every child the shell waited for,
 * from bash's `times`; the separate HTTP server is not counted, as for the kubeos side).
 */
export async function runFloorMeasured(script: string, args: readonly string[], options: FloorOptions = {}): Promise<{ seconds: number; cpuSeconds: number }> {
  const wrapped = `set -euo pipefail\nstart=$EPOCHREALTIME\n{\n${script}\n} >/dev/null\nend=$EPOCHREALTIME\necho "$start $end"\ntimes\n`;
  const result = await execa('bash', ['-c', wrapped, 'floor', ...args], {
    env: { ...options.env, LC_ALL: 'C' },
    timeout: options.timeoutMs ?? 20 * 60_000,
    reject: false,
    stdin: 'ignore',
  });
  if (result.exitCode !== 0) {
    throw new Error(`floor failed (exit ${String(result.exitCode ?? result.signal)}): ${script.trim()}\n${String(result.stderr).slice(-2000)}`);
  }
  const lines = String(result.stdout).trim().split('\n');
  // the last three lines: the two times, then `times` (the shell's own, then its children's)
  const [start, end] = (lines.at(-3) ?? '').split(' ').map(Number);
  if (start === undefined || end === undefined || !Number.isFinite(start) || !Number.isFinite(end)) {
    throw new Error(`floor printed no times: ${String(result.stdout).slice(-200)}`);
  }
  const cpu = (line: string | undefined) => (line ?? '').split(' ').reduce((sum, part) => sum + shellSeconds(part), 0);
  return { seconds: end - start, cpuSeconds: cpu(lines.at(-2)) + cpu(lines.at(-1)) };
}
