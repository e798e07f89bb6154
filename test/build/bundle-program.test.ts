/** The programs images and the operator's container carry, bundled by esbuild into one file each. */
import test from 'ava';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { makeTempDir } from '../helpers/temp-dir.js';

const bundler = fileURLToPath(new URL('../../dist/builder/rootfs/bundle-agent.js', import.meta.url));

test('the cluster program (operator, rollout, agent) bundles into a file that runs on its own, and no esbuild process outlives the bundling', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-bundle-program-');
  const outdir = join(dir, 'program');
  const out = join(outdir, 'kubeos.mjs');
  // a process of its own (this one runs tsx, which keeps an esbuild of its own): bundle, then list
  // its children. esbuild's API leaves its service running unless stopped; kubeos build left it in ps.
  const script = `import { bundleProgram } from ${JSON.stringify(bundler)};
import { execFileSync } from 'node:child_process';
await bundleProgram('runtime/operator/cli/main.ts', ${JSON.stringify(outdir)});
const children = () => execFileSync('ps', ['-o', 'stat=,comm=', '--ppid', String(process.pid)], { encoding: 'utf8' })
  .split('\\n').filter((line) => line.includes('esbuild') && !line.startsWith('Z'));
// stop() ends the service; the process may take a moment to go: 10 s at most, a bounded wait for an exit
const until = Date.now() + 10_000;
while (children().length > 0 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 50));
process.stdout.write(children().join('\\n'));`;
  const run = await execa('node', ['--input-type=module', '-e', script], { reject: false });
  t.is(run.exitCode, 0, run.stderr);
  t.is(run.stdout, '', 'an esbuild process outlived the bundling');
  const help = await execa('node', [out, '--help'], { cwd: dir });
  t.regex(help.stdout, /kubeos operator <command>/);
  t.regex(help.stdout, /kubeos rollout <command>/);
  t.regex(help.stdout, /kubeos agent <command>/, 'the agent DaemonSet runs the same image');
  t.notRegex(help.stdout, /kubeos build/, 'the cluster program carries no builder commands');
});

test('the agent\'s program starts without loading Node\'s assert module (yargs and the lock file\'s helpers get their checks alone)', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-bundle-agent-');
  const outdir = join(dir, 'agent');
  const { bundleAgent } = await import(bundler) as { bundleAgent: (out: string) => Promise<string[]> };
  await bundleAgent(outdir);
  // the built-in modules the process loaded, listed as it exits
  const listLoaded = 'process.on("exit", () => process.stderr.write("\\nloaded: " + process.moduleLoadList.filter((m) => m.startsWith("NativeModule ")).join(",")));';
  const preload = join(dir, 'list-loaded.cjs');
  await writeFile(preload, listLoaded);
  const run = await execa('node', ['--require', preload, join(outdir, 'kubeos.mjs'), 'agent', '--help'], { reject: false });
  t.is(run.exitCode, 0, run.stderr);
  t.regex(run.stdout, /kubeos agent <command>/);
  const loaded = /loaded: (.*)$/.exec(run.stderr)?.[1]?.split(',') ?? [];
  t.true(loaded.includes('NativeModule fs'), `the list of loaded modules is read: ${run.stderr}`);
  t.false(loaded.includes('NativeModule assert'), 'node:assert was loaded');
});

test('/usr/bin/kubeos starts the agent daemon with a bigger old generation, the other commands without, and passes every argument through unchanged', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-launcher-');
  const { agentLauncher, agentNodeFlags } = await import(bundler) as {
    agentLauncher: (node: string, program: string) => string;
    agentNodeFlags: (args: readonly string[]) => readonly string[];
  };
  // a real node and a program that says what node was started with
  const program = join(dir, "the program's file.mjs");
  await writeFile(program, 'process.stdout.write(JSON.stringify({ execArgv: process.execArgv, argv: process.argv.slice(2) }));\n');
  const launcher = join(dir, 'kubeos');
  await writeFile(launcher, agentLauncher(process.execPath, program));
  for (const args of [
    ['agent', 'upgrade', '--bundle', 'a file with spaces.kubeos', '--json'],
    ['agent', 'daemon'],
    ['agent', 'status', '--json'],
    ['agent', 'config', 'apply', 'upgrade'],
    ['--help'],
  ]) {
    const run = await execa('sh', [launcher, ...args]);
    const seen = JSON.parse(run.stdout) as { execArgv: string[]; argv: string[] };
    t.deepEqual(seen.argv, args);
    t.deepEqual(seen.execArgv, [...agentNodeFlags(args)], args.join(' '));
  }
  t.deepEqual([...agentNodeFlags(['agent', 'daemon'])], ['--initial-old-space-size=64']);
  for (const quick of ['status', 'upgrade']) t.deepEqual([...agentNodeFlags(['agent', quick])], [], quick);
});
