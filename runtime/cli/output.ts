/** Printing for the CLIs (`kubeos` and the agent bin in images): results as text or `--json`, errors with code and hint, progress on a TTY. */
import { isKubeosError } from '../core/errors.js';

export interface GlobalArgs {
  json?: boolean;
}

export function printResult(args: GlobalArgs, value: unknown, text: () => string): void {
  closeProgressLine();
  if (args.json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else process.stdout.write(`${text()}\n`);
}

export function printError(error: unknown, json: boolean): number {
  closeProgressLine();
  if (isKubeosError(error)) {
    if (json) process.stdout.write(`${JSON.stringify({ error: error.toJSON() }, null, 2)}\n`);
    process.stderr.write(`kubeos: error ${error.code}: ${error.message}\n`);
    if (error.hint) process.stderr.write(`  hint: ${error.hint}\n`);
    return error.code === 'E_USAGE' ? 2 : 1;
  }
  const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
  if (json) process.stdout.write(`${JSON.stringify({ error: { code: 'E_INTERNAL', message: String(error) } })}\n`);
  process.stderr.write(`kubeos: internal error: ${message}\n`);
  return 70;
}

/**
 * A progress reporter, called with a step, the fraction done and, when known, bytes done/total:
 * - on a terminal, one line rewritten in place with the fraction, bytes, rate and ETA;
 * - otherwise (CI logs, journald) a line when a step starts and then every 10% or 10 s, never a
 *   lone "0%" that looks stuck;
 * - with --json, the same cadence as NDJSON events on stderr ({"event":"progress",...}), so stdout
 *   holds only the result.
 * A line left open on the terminal is closed before the result or an error is printed.
 */
export type Progress = (step: string, fraction?: number, bytes?: { done: number; total: number }) => void;

/** Where a progress line is still open on a terminal, if one is. */
let openLine: ((text: string) => void) | undefined;

/** Ends a progress line still open on the terminal, so what follows starts on its own line. */
export function closeProgressLine(): void {
  openLine?.('\n');
  openLine = undefined;
}

const mib = (n: number) => `${(n / 1048576).toFixed(n < 10 * 1048576 ? 1 : 0)} MiB`;

function describe(step: string, fraction: number | undefined, bytes: { done: number; total: number } | undefined, startedAt: number, now: number): string {
  // a bare "0%" tells a log reader nothing but "stuck": a step that starts without sizes is its name
  if (fraction === undefined || (fraction === 0 && bytes === undefined)) return step;
  const parts = [`${Math.floor(fraction * 100)}%`];
  if (bytes !== undefined) {
    parts.push(`${mib(bytes.done)} of ${mib(bytes.total)}`);
    const seconds = (now - startedAt) / 1000;
    if (seconds >= 1 && bytes.done > 0) {
      const rate = bytes.done / seconds;
      parts.push(`${mib(rate)}/s`);
      if (fraction < 1) parts.push(`ETA ${Math.ceil((bytes.total - bytes.done) / rate)} s`);
    }
  }
  return `${step} ${parts.join(', ')}`;
}

export function makeProgress(args: GlobalArgs, options: { tty?: boolean; write?: (text: string) => void; now?: () => number } = {}): Progress {
  const tty = options.tty ?? process.stderr.isTTY === true;
  const write = options.write ?? ((text: string) => process.stderr.write(text));
  const now = options.now ?? Date.now;
  let step = '';
  let startedAt = 0;
  let lastAt = 0;
  let lastTenth = -1;
  let last = '';
  return (next, fraction, bytes) => {
    const at = now();
    const newStep = next !== step;
    if (newStep) {
      step = next;
      startedAt = at;
      lastTenth = -1;
    }
    const tenth = fraction === undefined ? -1 : Math.floor(fraction * 10);
    // a new step prints at once; inside one, every 10% or every 10 s (a terminal redraws each change)
    const due = newStep || tenth > lastTenth || at - lastAt >= 10_000;
    if (args.json) {
      if (!due) return;
      write(`${JSON.stringify({ event: 'progress', step, ...(fraction === undefined ? {} : { fraction: Math.round(fraction * 1000) / 1000 }), ...(bytes ?? {}), time: new Date(at).toISOString() })}\n`);
    } else if (tty) {
      const line = describe(step, fraction, bytes, startedAt, at);
      if (line === last) return;
      if (newStep) closeProgressLine();
      write(`\r\x1b[K${line}`);
      openLine = write;
      last = line;
      if (step === 'done') closeProgressLine();
    } else {
      if (!due) return;
      write(`${describe(step, fraction, bytes, startedAt, at)}\n`);
    }
    lastAt = at;
    if (tenth > lastTenth) lastTenth = tenth;
  };
}
