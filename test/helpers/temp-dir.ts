/**
 * Temporary directories for tests, always removed: per test with t.teardown, or per test file after
 * its last test (for fixtures built at load time or in before hooks: such a file declares
 * `test.after.always(removeFileTempDirs)` itself, as ava refuses hooks declared by an import before
 * the file's own top-level awaits). Disk images are big, and a suite that leaks them fills the
 * machine's disk. KUBEOS_KEEP_TEST_DIRS=1 keeps them for debugging.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const keep = process.env['KUBEOS_KEEP_TEST_DIRS'] === '1';
const fileDirs: string[] = [];

async function removeAll(dirs: string[]): Promise<void> {
  if (keep) return;
  await Promise.all(dirs.map((dir) => rm(dir, { recursive: true, force: true })));
}

/** A directory removed when the test ends, pass or fail. */
export async function makeTempDir(t: { teardown: (fn: () => Promise<void>) => void }, prefix = 'kubeos-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.teardown(() => removeAll([dir]));
  return dir;
}

/** For the file's `test.after.always`: removes every directory makeFileTempDir made. */
export async function removeFileTempDirs(): Promise<void> {
  await removeAll(fileDirs.splice(0));
}

/** A directory removed after the file's last test (see removeFileTempDirs). */
export async function makeFileTempDir(prefix = 'kubeos-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  fileDirs.push(dir);
  return dir;
}
