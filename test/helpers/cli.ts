/** Runs the built `kubeos` CLI as a subprocess, as users run it (npm test builds dist/ first). */
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';

export const cliPath = fileURLToPath(new URL('../../dist/builder/cli/main.js', import.meta.url));

export interface CliResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  /** stdout parsed, when --json was passed and it is JSON. */
  json: any;
}

export async function kubeos(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}): Promise<CliResult> {
  const result = await execa('node', [cliPath, ...args], { reject: false, env: options.env, cwd: options.cwd, timeout: 10 * 60_000, maxBuffer: 16 * 1024 * 1024 });
  const stdout = String(result.stdout);
  let json: unknown;
  if (args.includes('--json')) {
    try {
      json = JSON.parse(stdout);
    } catch {
      json = undefined;
    }
  }
  return { exitCode: result.exitCode ?? 1, stdout, stderr: String(result.stderr), json };
}

/** The error object a failing `--json` command prints on stdout. */
export function jsonError(stdout: string): { code: string; message: string; details?: Record<string, unknown> } {
  const parsed = JSON.parse(stdout) as { error: { code: string; message: string; details?: Record<string, unknown> } };
  return parsed.error;
}
