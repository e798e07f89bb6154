/** Runs the built `kubeos` CLI as a subprocess (npm test builds dist/ first). */
import { execa } from 'execa';
import { fileURLToPath } from 'node:url';

export const cliPath = fileURLToPath(new URL('../../dist/builder/cli/main.js', import.meta.url));

export async function kubeos(args: string[], options: { env?: Record<string, string>; cwd?: string } = {}) {
  const result = await execa('node', [cliPath, ...args], { reject: false, env: options.env, cwd: options.cwd, timeout: 10 * 60_000 });
  return { exitCode: result.exitCode, stdout: String(result.stdout), stderr: String(result.stderr) };
}

/** The error object a failing `--json` command prints on stdout. */
export function jsonError(stdout: string): { code: string; message: string; details?: Record<string, unknown> } {
  const parsed = JSON.parse(stdout) as { error: { code: string; message: string; details?: Record<string, unknown> } };
  return parsed.error;
}
