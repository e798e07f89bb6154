/**
 * The runtime hosts run today (before bundle format 2), checked out of git into a temp folder
 * whose node_modules is this checkout's: a test imports its reader or its whole agent and feeds
 * it what the new builder writes, to prove old hosts keep installing new bundles.
 */
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import * as tar from 'tar-stream';
import type { ExecutionContext } from 'ava';
import { makeTempDir } from './temp-dir.js';

/** main when format 2 work began: the agent every host runs today. */
export const formatOneCommit = 'ebbd9aa4265f7bcd55fdde626e29309682047343';
/** main before the index object: an agent that delta-installs bundles with the inline index only. */
export const inlineIndexCommit = '2fae49ba7ad55454cfa3b2eb3657c2d6d0b55f17';

const repo = fileURLToPath(new URL('../..', import.meta.url));

/** A folder holding `runtime/` as of `commit` (default `formatOneCommit`); import `join(dir, 'runtime/...ts')`. */
export async function checkOutOldRuntime(t: ExecutionContext, commit = formatOneCommit): Promise<string> {
  const dir = await makeTempDir(t, 'kubeos-old-runtime-');
  const archive = await execa('git', ['-C', repo, 'archive', '--format=tar', commit, 'runtime'], { encoding: 'buffer', stripFinalNewline: false, timeout: 60_000 });
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      const parts: Buffer[] = [];
      for await (const part of entry) parts.push(part as Buffer);
      if (entry.header.type === 'file') {
        const path = join(dir, entry.header.name);
        await mkdir(dirname(path), { recursive: true });
        await writeFile(path, Buffer.concat(parts));
      }
    }
  })();
  extract.end(Buffer.from(archive.stdout));
  await done;
  await symlink(join(repo, 'node_modules'), join(dir, 'node_modules'));
  await writeFile(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
  return dir;
}
