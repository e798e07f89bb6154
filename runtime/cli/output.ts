/** Printing for the CLIs (`kubeos` and the agent bin in images): results as text or `--json`, errors with code and hint, progress on a TTY. */
import { isKubeosError } from '../core/errors.js';

export interface GlobalArgs {
  json?: boolean;
}

export function printResult(args: GlobalArgs, value: unknown, text: () => string): void {
  if (args.json) process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
  else process.stdout.write(`${text()}\n`);
}

export function printError(error: unknown, json: boolean): number {
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

/** A progress reporter: one rewritten line on a terminal, one line per step otherwise (quiet with --json). */
export type Progress = (step: string, fraction?: number) => void;

export function makeProgress(args: GlobalArgs): Progress {
  if (args.json) return () => {};
  const tty = process.stderr.isTTY === true;
  let last = '';
  let lastStep = '';
  return (step, fraction) => {
    const pct = fraction === undefined ? '' : ` ${Math.floor(fraction * 100)}%`;
    const line = `${step}${pct}`;
    // print only what changed: a serial console pays for every byte
    if (tty && line !== last) process.stderr.write(`\r\x1b[K${line}`);
    else if (!tty && step !== lastStep) process.stderr.write(`${line}\n`);
    last = line;
    lastStep = step;
    if (tty && step === 'done') process.stderr.write('\n');
  };
}
