/** zstd as a streaming child through exec.ts, with an exit report that never rejects. */
import type { Readable, Writable } from 'node:stream';
import { spawnTool } from '../exec.js';

export interface ZstdChild {
  stdin: Writable;
  stdout: Readable;
  /** Resolves on exit; stderr is zstd's message for errors. */
  exited: Promise<{ exitCode: number | undefined; stderr: string; cancelled: boolean }>;
  kill(): void;
}

export async function startZstd(args: readonly string[], options: { signal?: AbortSignal | undefined; timeoutMs: number }): Promise<ZstdChild> {
  const { child } = await spawnTool('zstd', args, { signal: options.signal, timeoutMs: options.timeoutMs });
  const exited = Promise.resolve(child).then(
    (result) => ({ exitCode: result.exitCode, stderr: Buffer.from((result.stderr as Uint8Array | undefined) ?? []).toString('utf8').trim(), cancelled: result.isCanceled === true }),
    (error: unknown) => ({ exitCode: undefined, stderr: String(error), cancelled: false }),
  );
  // EPIPE after an early exit is judged by the exit code, not thrown from the pipe.
  child.stdin?.on('error', () => {});
  return { stdin: child.stdin!, stdout: child.stdout!, exited, kill: () => child.kill('SIGKILL') };
}
