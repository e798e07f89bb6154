/**
 * kubeos programs as a folder of JavaScript modules each: esbuild bundles an entry point with its
 * dependencies (yargs, tar-stream, execa, proper-lockfile, the Kubernetes client), so an image
 * needs Node.js and this folder, not node_modules. Code a command loads on use (`await import`)
 * goes into chunks of its own (`chunks/`), so a command parses only what it runs: `agent status`
 * starts without the Kubernetes client or the install path. esbuild's output depends on its input
 * alone; chunk names carry their content's hash.
 */
import { readdir } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { projectRoot } from '../project-root.js';

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
