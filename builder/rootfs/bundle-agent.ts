/**
 * kubeos programs as one JavaScript file each: esbuild bundles an entry point with its dependencies
 * (yargs, tar-stream, execa, proper-lockfile, the Kubernetes client), so an image needs Node.js and
 * this file, not node_modules. esbuild's output depends on its input alone.
 */
import { join } from 'node:path';
import { projectRoot } from '../project-root.js';

/** The agent's CLI, for disk images. */
export async function bundleAgent(outfile: string): Promise<void> {
  await bundleProgram('runtime/agent/cli/main.ts', outfile);
}

/** `entry` (relative to the project) bundled into `outfile`. */
export async function bundleProgram(entry: string, outfile: string): Promise<void> {
  // loaded on use: esbuild is a native tool that the bundles themselves never carry
  const { build, stop } = await import('esbuild');
  try {
    await build({
      entryPoints: [join(projectRoot(), entry)],
      outfile,
      bundle: true,
      platform: 'node',
      format: 'esm',
      target: 'node20',
      minify: true,
      legalComments: 'none',
      logLevel: 'silent',
      external: ['esbuild'],
      // CommonJS dependencies call require() for Node's built-ins; give the ES module one
      banner: { js: "import { createRequire as __kubeosRequire } from 'node:module'; const require = __kubeosRequire(import.meta.url);" },
    });
  } finally {
    // esbuild's API keeps a service process for later builds; kubeos builds once, so end it
    await stop();
  }
}
