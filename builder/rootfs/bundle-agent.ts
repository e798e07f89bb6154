/**
 * kubeos programs as a folder of JavaScript modules each: esbuild bundles an entry point with its
 * dependencies (yargs, tar-stream, execa, proper-lockfile, the Kubernetes client), so an image
 * needs Node.js and this folder, not node_modules. Code a command loads on use (`await import`)
 * goes into chunks of its own (`chunks/`), so a command parses only what it runs: `agent status`
 * starts without the Kubernetes client or the install path. esbuild's output depends on its input
 * alone; chunk names carry their content's hash.
 */
import { readdir } from 'node:fs/promises';
import type { Plugin } from 'esbuild';
import { join, relative } from 'node:path';
import { projectRoot } from '../project-root.js';

/**
 * yargs, signal-exit (proper-lockfile's) and graceful-fs load Node's `assert` for a check or two
 * (`equal`, `strictEqual`, `notStrictEqual`); loading it costs a program 2-8 ms of start-up (its
 * AssertionError pulls in the terminal colour set-up). This gives those three the checks alone,
 * throwing an Error named AssertionError all the same; other importers get Node's module.
 */
const lightAssert: Plugin = {
  name: 'kubeos-light-assert',
  setup(build) {
    build.onResolve({ filter: /^(node:)?assert$/ }, (args) => (/[\\/]node_modules[\\/](yargs|signal-exit|graceful-fs)[\\/]/.test(args.importer) ? { path: 'assert', namespace: 'kubeos-light-assert' } : undefined));
    build.onLoad({ filter: /.*/, namespace: 'kubeos-light-assert' }, () => ({
      loader: 'js',
      contents: [
        'const fail = (message, fallback) => { const error = new Error(message ?? fallback); error.name = "AssertionError"; throw error; };',
        'export const strictEqual = (actual, expected, message) => { if (!Object.is(actual, expected)) fail(message, `expected ${String(expected)}, got ${String(actual)}`); };',
        'export const equal = (actual, expected, message) => { if (actual != expected) fail(message, `expected ${String(expected)}, got ${String(actual)}`); };',
        'export const notStrictEqual = (actual, expected, message) => { if (Object.is(actual, expected)) fail(message, `expected anything but ${String(expected)}`); };',
      ].join('\n'),
    }));
  },
};

/**
 * What node runs `agent daemon` with, the agent that installs a fleet's updates. An install
 * allocates a 64 KiB ArrayBuffer for each socket read of the download, and with V8's small
 * starting limit for the old generation that set off 33-40 full collections a GiB, about 0.8 s of
 * CPU on the main thread and V8's helper threads. Starting the old generation at 64 MB leaves
 * none: a 1 GiB install took 3.83 s of CPU instead of 4.59 s, for the same peak RSS (within 2 MiB).
 * It is a starting size, not a cap. Other commands go without it, `agent upgrade` from a shell
 * too: a heap flag costs node's start-up some 10-20 ms (the program's built-in modules load slower),
 * which would take `agent upgrade`'s start past 100 ms of overhead; the daemon starts once.
 */
export const agentInstallNodeFlags = ['--initial-old-space-size=64'] as const;
const installCommands = ['daemon'] as const;

/** The options node gets before the program for `kubeos ARGS`, as /usr/bin/kubeos passes them. */
export function agentNodeFlags(args: readonly string[]): readonly string[] {
  return args[0] === 'agent' && (installCommands as readonly string[]).includes(args[1] ?? '') ? agentInstallNodeFlags : [];
}

const shellQuote = (text: string) => `'${text.replaceAll("'", "'\\''")}'`;

/** The launcher an image carries as /usr/bin/kubeos: `node` runs `program`, with the install flags for agentNodeFlags' commands. */
export function agentLauncher(node: string, program: string): string {
  const run = (flags: readonly string[]) => ['exec', shellQuote(node), ...flags, shellQuote(program), '"$@"'].join(' ');
  return [
    '#!/bin/sh',
    '# the daemon starts with a bigger old generation (builder/rootfs/bundle-agent.ts)',
    'case "$1 $2" in',
    `  ${installCommands.map((command) => `'agent ${command}'`).join('|')}) ${run(agentInstallNodeFlags)} ;;`,
    'esac',
    run([]),
    '',
  ].join('\n');
}

/** The agent's program, for disk images: `outdir/kubeos.mjs` and its chunks. */
export async function bundleAgent(outdir: string): Promise<string[]> {
  return bundleProgram('runtime/agent/cli/main.ts', outdir);
}

/**
 * `entry` (relative to the project) bundled into `outdir` (new or empty): the program is
 * `outdir/kubeos.mjs`. Returns every file written, relative to `outdir`, sorted.
 */
export async function bundleProgram(entry: string, outdir: string): Promise<string[]> {
  // loaded on use: esbuild is a native tool that the bundles themselves never carry
  const { build, stop } = await import('esbuild');
  try {
    await build({
      entryPoints: [{ in: join(projectRoot(), entry), out: 'kubeos' }],
      outdir,
      bundle: true,
      splitting: true,
      chunkNames: 'chunks/[name]-[hash]',
      outExtension: { '.js': '.mjs' },
      platform: 'node',
      format: 'esm',
      target: 'node20',
      minify: true,
      legalComments: 'none',
      logLevel: 'silent',
      external: ['esbuild'],
      plugins: [lightAssert],
      // CommonJS dependencies call require() for Node's built-ins; give each ES module one
      banner: { js: "import { createRequire as __kubeosRequire } from 'node:module'; const require = __kubeosRequire(import.meta.url);" },
    });
  } finally {
    // esbuild's API keeps a service process for later builds; kubeos builds once, so end it
    await stop();
  }
  const files = await readdir(outdir, { recursive: true, withFileTypes: true });
  return files.filter((f) => f.isFile()).map((f) => relative(outdir, join(f.parentPath, f.name))).sort();
}
