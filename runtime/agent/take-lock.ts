/**
 * One upgrade at a time: a proper-lockfile lock whose holder (pid, command) is named to a second
 * caller. It lives in /run (tmpfs), so a reboot after a crash clears it.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import lockfile from 'proper-lockfile';
import { KubeosError } from '../core/errors.js';

export interface HeldLock {
  /** Aborted when the lock is lost (proper-lockfile's default would throw from a timer). */
  signal: AbortSignal;
  release(): Promise<void>;
}

export async function takeLock(lockDir: string, what: string): Promise<HeldLock> {
  await mkdir(lockDir, { recursive: true });
  const target = join(lockDir, 'agent');
  const holderFile = join(lockDir, 'agent.holder.json');
  await writeFile(target, '', { flag: 'a' });
  const controller = new AbortController();
  let release: () => Promise<void>;
  try {
    release = await lockfile.lock(target, {
      stale: 30_000,
      update: 5_000,
      retries: 0,
      realpath: false,
      onCompromised: (error) => controller.abort(new KubeosError('E_LOCKED', `the agent lock was lost: ${error.message}`, { cause: error })),
    });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ELOCKED') throw error;
    const holder = await readHolder(holderFile);
    throw new KubeosError('E_LOCKED', `another agent operation holds the lock${holder ? `: ${holder.what} (pid ${holder.pid}, since ${holder.since})` : ''}`, {
      cause: error,
      hint: 'wait for it to finish; a crashed holder\'s lock goes stale after 30 s',
      details: { holder },
    });
  }
  await writeFile(holderFile, JSON.stringify({ pid: process.pid, what, since: new Date().toISOString() }));
  return { signal: controller.signal, release: () => release() };
}

/** Who holds the lock, if its holder file says so; an empty or torn file (a holder killed while writing it) names nobody. */
async function readHolder(file: string): Promise<{ pid: number; what: string; since: string } | undefined> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as { pid?: unknown; what?: unknown; since?: unknown };
    if (typeof parsed.pid === 'number' && typeof parsed.what === 'string' && typeof parsed.since === 'string') return { pid: parsed.pid, what: parsed.what, since: parsed.since };
  } catch {
    // unreadable: the lock is held all the same
  }
  return undefined;
}
