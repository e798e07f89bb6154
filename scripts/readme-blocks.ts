/**
 * The README's shell blocks, run as written: `npm run demo:release` runs "A release, end to end",
 * and test/readme/ runs every block it can (the same code). A block runs with bash -euo pipefail in
 * a scratch directory that looks like the checkout to npx (package.json, node_modules, dist,
 * images, layouts are links to it), so what it writes (keys/, out/, s3/, and TMPDIR) stays in that directory.
 * Everything the block starts (a server with `&`) is in its own process group, ended afterwards.
 *
 *   node dist/scripts/readme-blocks.js run "A release, end to end" [--dir out/release-demo]
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, symlink, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { execa } from 'execa';
import { projectRoot } from '../builder/project-root.js';
import { KubeosError } from '../runtime/core/errors.js';

export interface ReadmeBlock {
  /** The `##` heading the block sits under. */
  section: string;
  /** What follows the opening fence: sh, json. */
  lang: string;
  code: string;
}

/** Every fenced block of a Markdown text (```sh by default), with the heading it sits under. */
export function readmeBlocks(markdown: string, lang = 'sh'): ReadmeBlock[] {
  const blocks: ReadmeBlock[] = [];
  let section = '';
  let code: string[] | undefined;
  let fence = '';
  for (const line of markdown.split('\n')) {
    if (code !== undefined) {
      if (line.startsWith('```')) {
        if (lang === '*' || fence === lang) blocks.push({ section, lang: fence, code: `${code.join('\n')}\n` });
        code = undefined;
      } else {
        code.push(line);
      }
    } else if (line.startsWith('## ')) {
      section = line.slice(3).trim();
    } else if (line.startsWith('```')) {
      fence = line.slice(3).trim();
      code = [];
    }
  }
  return blocks;
}

export async function readmeBlock(section: string): Promise<string> {
  const blocks = readmeBlocks(await readFile(join(projectRoot(), 'README.md'), 'utf8')).filter((b) => b.section === section);
  if (blocks.length !== 1) {
    throw new KubeosError('E_USAGE', `README.md has ${blocks.length} sh blocks under "## ${section}", expected 1`, { hint: 'name a section that holds one ```sh block' });
  }
  return blocks[0]!.code;
}

/** What marks a directory as a scratch directory of this runner, which it may replace. */
const marker = '.kubeos-readme-scratch';
const linked = ['package.json', 'package-lock.json', 'node_modules', 'dist', 'images', 'layouts'];

async function prepareScratch(dir: string): Promise<void> {
  if (existsSync(dir)) {
    const entries = await readdir(dir);
    if (entries.length > 0 && !entries.includes(marker)) {
      throw new KubeosError('E_USAGE', `--dir ${dir} exists and was not made by this runner`, { hint: 'name a new or empty directory', details: { dir } });
    }
    await rm(dir, { recursive: true, force: true });
  }
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, marker), 'made by scripts/readme-blocks.ts; replaced by its next run\n');
  for (const name of linked) await symlink(join(projectRoot(), name), join(dir, name));
}

export interface RunBlockOptions {
  code: string;
  dir: string;
  /** Lines left out (e.g. an interactive console): each is printed as skipped. */
  skip?: RegExp;
  /** Where the block's output goes (default: this process's). */
  output?: 'inherit' | 'capture';
  timeoutMs?: number;
}

export async function runBlock(options: RunBlockOptions): Promise<{ exitCode: number; output: string }> {
  await prepareScratch(options.dir);
  const lines = options.code.split('\n').map((line) => (options.skip?.test(line) ? `# skipped here: ${line}` : line));
  const script = join(options.dir, 'block.sh');
  await writeFile(script, `set -euo pipefail\nset -v\n${lines.join('\n')}`);
  // temp files of the block's commands (qemu boot's console log) stay in the scratch directory too
  const tmp = join(options.dir, 'tmp');
  await mkdir(tmp);
  const child = execa('bash', [script], {
    cwd: options.dir,
    env: { TMPDIR: tmp },
    detached: true,
    reject: false,
    all: true,
    stdin: 'ignore',
    ...(options.output === 'capture' ? {} : { stdout: 'inherit', stderr: 'inherit' }),
    ...(options.timeoutMs === undefined ? {} : { timeout: options.timeoutMs }),
  });
  const endGroup = (signal: NodeJS.Signals) => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, signal);
    } catch {
      // nothing of the group is left
    }
  };
  // the group is not the terminal's: Ctrl-C here must end what the block started too
  const onSignal = () => endGroup('SIGTERM');
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    // bash's own exit, not the end of its output: a server the block left running (started with &)
    // holds the output open; ending the block's process group then closes it
    const exited = new Promise<void>((done) => child.once('exit', () => done()));
    await Promise.race([exited, child.catch(() => {})]);
    endGroup('SIGTERM');
    // what ignores SIGTERM for 10 s gets SIGKILL, so the output closes and this returns
    const grace = setTimeout(() => endGroup('SIGKILL'), 10_000);
    const result = await child.finally(() => clearTimeout(grace));
    return { exitCode: typeof result.exitCode === 'number' ? result.exitCode : 1, output: typeof result.all === 'string' ? result.all : '' };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}

async function main(argv: string[]): Promise<number> {
  const [verb, section, ...rest] = argv;
  const dirIndex = rest.indexOf('--dir');
  if (verb !== 'run' || section === undefined || (dirIndex >= 0 && rest[dirIndex + 1] === undefined)) {
    process.stderr.write('usage: node dist/scripts/readme-blocks.js run "SECTION" [--dir DIR]\n');
    return 2;
  }
  const dir = resolve(dirIndex >= 0 ? rest[dirIndex + 1]! : join('out', 'readme', section.toLowerCase().replace(/[^a-z0-9]+/g, '-')));
  try {
    const code = await readmeBlock(section);
    process.stderr.write(`running README.md "## ${section}" in ${dir}\n`);
    const { exitCode } = await runBlock({ code, dir });
    process.stderr.write(exitCode === 0 ? `done: every line of "## ${section}" ran (its files are in ${dir})\n` : `failed with exit code ${exitCode}: the line printed last failed (files in ${dir})\n`);
    return exitCode === 0 ? 0 : 1;
  } catch (error) {
    process.stderr.write(`${error instanceof KubeosError ? `${error.code}: ${error.message}${error.hint ? `\n  hint: ${error.hint}` : ''}` : String(error)}\n`);
    return 1;
  }
}

if (process.argv[1] !== undefined && import.meta.url === new URL(`file://${resolve(process.argv[1])}`).href) {
  process.exitCode = await main(process.argv.slice(2));
}
