/** Finds and reads a layout: a path to a JSON file, or the name of a built-in one in layouts/. */
import { readFile } from 'node:fs/promises';
import { join, relative } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { projectRoot } from '../project-root.js';
import type { Layout } from './layout.js';
import { validateLayout } from './validate-layout.js';

export function resolveLayoutPath(nameOrPath: string): string {
  if (nameOrPath.includes('/') || nameOrPath.endsWith('.json')) return nameOrPath;
  return join(projectRoot(), 'layouts', `${nameOrPath}.json`);
}

export async function loadLayout(nameOrPath: string): Promise<Layout> {
  const path = resolveLayoutPath(nameOrPath);
  const shown = path.startsWith(projectRoot()) ? relative(projectRoot(), path) : path;
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new KubeosError('E_LAYOUT_INVALID', `cannot read layout ${shown}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, {
      cause: error,
      hint: 'give a path to a layout JSON file, or the name of one in layouts/ (e.g. "kubeos")',
      details: { file: shown },
    });
  }
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (error) {
    throw new KubeosError('E_LAYOUT_INVALID', `layout ${shown} is not valid JSON: ${(error as Error).message}`, { cause: error, details: { file: shown } });
  }
  return validateLayout(data, shown);
}
