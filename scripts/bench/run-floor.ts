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
  const wrapped = `set -euo pipefail\nstart=$EPOCHREALTIME\n{\n${script}\n} >/dev/null\nend=$EPOCHREALTIME\necho "$start $end"\n`;
  const result = await execa('bash', ['-c', wrapped, 'floor', ...args], {
    env: { ...options.env, LC_ALL: 'C' },
    timeout: options.timeoutMs ?? 20 * 60_000,
    reject: false,
    stdin: 'ignore',
  });
  if (result.exitCode !== 0) {
    throw new Error(`floor failed (exit ${String(result.exitCode ?? result.signal)}): ${script.trim()}\n${String(result.stderr).slice(-2000)}`);
  }
  const [start, end] = (String(result.stdout).trim().split('\n').at(-1) ?? '').split(' ').map(Number);
  if (start === undefined || end === undefined || !Number.isFinite(start) || !Number.isFinite(end)) {
    throw new Error(`floor printed no times: ${String(result.stdout).slice(-200)}`);
  }
  return end - start;
}
