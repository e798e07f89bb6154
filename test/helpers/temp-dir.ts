/**
 * Temporary directories for tests, always removed: per test with t.teardown, or per test file after
 * its last test (for fixtures built at load time or in before hooks). Disk images are big, and a
 * suite that leaks them fills the machine's disk. KUBEOS_KEEP_TEST_DIRS=1 keeps them for debugging.
 */
import test from 'ava';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const keep = process.env['KUBEOS_KEEP_TEST_DIRS'] === '1';
const fileDirs: string[] = [];

test.after.always('remove the test file\'s temporary directories', async () => {
  await removeAll(fileDirs.splice(0));
});

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

/** A directory removed after the last test of the file that made it. */
export async function makeFileTempDir(prefix = 'kubeos-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  fileDirs.push(dir);
  return dir;
}
