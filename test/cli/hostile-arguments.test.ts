/**
 * No command exits 70 (an internal error) or prints a stack trace for any input: every leaf
 * command, given nothing, a path that does not exist, a directory, an empty file and a file of
 * random bytes where it expects a file, ends with a clear kubeos error (exit 1 or 2) in bounded
 * time, with --json and without. `qemu boot` is given only inputs it refuses before starting QEMU.
 */
import test from 'ava';
import { execa } from 'execa';
import { randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cliPath } from '../helpers/cli.js';

// made at load time: the tests are declared from these paths, synchronously
const dir = mkdtempSync(join(tmpdir(), 'kubeos-hostile-args-'));
const missing = join(dir, 'does-not-exist');
const folder = join(dir, 'a-directory');
const empty = join(dir, 'empty');
const garbage = join(dir, 'garbage');
const files = { missing, folder, empty, garbage };
test.before(async () => {
  await mkdir(folder);
  await writeFile(empty, '');
  await writeFile(garbage, randomBytes(4096));
});
test.after.always('remove the temporary directory', () => rm(dir, { recursive: true, force: true }));

/** Where each command takes a file: a positional, or an option. */
const commands: Array<{ words: string[]; file: (path: string) => string[] }> = [
  { words: ['build'], file: (p) => [p, '--out', join(dir, 'out-build')] },
  { words: ['bundle', 'create'], file: (p) => ['--rootfs', p, '--image-version', '1.0.0', '--key', p, '--out', join(dir, 'out.bundle')] },
  { words: ['bundle', 'verify'], file: (p) => [p, '--key', p] },
  { words: ['bundle', 'info'], file: (p) => [p] },
  { words: ['bundle', 'diff'], file: (p) => [p, p] },
  { words: ['channel', 'show'], file: (p) => [p] },
  { words: ['keygen'], file: (p) => ['--out', p] },
  { words: ['publish'], file: (p) => [p, '--channel', 'stable', '--key', p, '--bucket', 'b', '--endpoint', 'http://127.0.0.1:9'] },
  { words: ['oci', 'build'], file: (p) => ['--out', p, '--archive', join(p, 'x', 'y.tar')] },
  { words: ['operator', 'run'], file: (p) => ['--kubeconfig', p] },
  { words: ['qemu', 'boot'], file: (p) => [p, '--timeout', '5'] },
  { words: ['rollout', 'status'], file: (p) => ['fleet', '--kubeconfig', p] },
  { words: ['rollout', 'undo'], file: (p) => ['fleet', '--kubeconfig', p] },
  { words: ['agent', 'status'], file: (p) => ['--config', p] },
  { words: ['agent', 'upgrade'], file: (p) => ['--config', p, '--bundle', p] },
  { words: ['agent', 'commit'], file: (p) => ['--config', p] },
  { words: ['agent', 'rollback'], file: (p) => ['--config', p, '--no-reboot'] },
  { words: ['agent', 'daemon'], file: (p) => ['--config', p] },
  { words: ['agent', 'config', 'apply'], file: (p) => [p, '--config', p] },
  { words: ['agent', 'config', 'status'], file: (p) => ['--config', p] },
  { words: ['agent', 'config', 'rollback'], file: (p) => ['--config', p] },
  { words: ['agent', 'config', 'commit'], file: (p) => ['--config', p] },
];

/**
 * Cases that are not hostile for that command, left out:
 * - qemu boot of an empty or garbage disk starts QEMU and waits for its --timeout (bounded);
 * - build with nothing builds the default image, keygen --out and oci build --out a path that does
 *   not exist yet create it, and keygen writes into a directory: each is the command working.
 */
const notHostile: Record<string, string[]> = { 'qemu boot': ['empty', 'garbage'], build: ['nothing'], keygen: ['missing', 'folder'], 'oci build': ['missing'] };
const skip = (words: string[], kind: string) => notHostile[words.join(' ')]?.includes(kind) === true;

async function run(args: string[]) {
  // a fresh HOME and no KUBECONFIG: nothing of this machine's own configuration is read
  const result = await execa('node', [cliPath, ...args], { reject: false, cwd: dir, timeout: 60_000, env: { HOME: dir, KUBECONFIG: '' }, extendEnv: true });
  return { code: result.exitCode, timedOut: result.timedOut, out: `${String(result.stdout)}\n${String(result.stderr)}` };
}

for (const { words, file } of commands) {
  test(`kubeos ${words.join(' ')} refuses hostile arguments with a kubeos error, never an internal one`, async (t) => {
    const cases: Array<[string, string[]]> = skip(words, 'nothing') ? [] : [['nothing', []]];
    for (const [kind, path] of Object.entries(files)) if (!skip(words, kind)) cases.push([kind, file(path)]);
    for (const [kind, args] of cases) {
      for (const json of [false, true]) {
        const r = await run([...words, ...args, ...(json ? ['--json'] : [])]);
        const what = `${words.join(' ')} with ${kind}${json ? ' --json' : ''}`;
        t.false(r.timedOut, `${what} did not finish in 60 s`);
        t.true(r.code === 1 || r.code === 2, `${what} exited ${r.code}:\n${r.out.slice(0, 1500)}`);
        t.notRegex(r.out, /internal error|\n\s+at .+\(.+:\d+:\d+\)/, `${what} printed an internal error or a stack trace:\n${r.out.slice(0, 1500)}`);
        t.regex(r.out, /E_[A-Z_]+/, `${what} names an error code:\n${r.out.slice(0, 600)}`);
      }
    }
  });
}
