/**
 * The agent as one JavaScript file for images: esbuild bundles runtime/agent/cli/main.ts with its
 * dependencies (yargs, tar-stream, execa, proper-lockfile, the Kubernetes client), so an image needs
 * Node.js and this file, not node_modules. esbuild's output depends on its input alone.
 */
import { build } from 'esbuild';
import { join } from 'node:path';
import { projectRoot } from '../project-root.js';

export async function bundleAgent(outfile: string): Promise<void> {
  await build({
    entryPoints: [join(projectRoot(), 'runtime/agent/cli/main.ts')],
    outfile,
    bundle: true,
    platform: 'node',
    format: 'esm',
    target: 'node20',
    minify: true,
    legalComments: 'none',
    logLevel: 'silent',
    // CommonJS dependencies call require() for Node's built-ins; give the ES module one
    banner: { js: "import { createRequire as __kubeosRequire } from 'node:module'; const require = __kubeosRequire(import.meta.url);" },
  });
}
