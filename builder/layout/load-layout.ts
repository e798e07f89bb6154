/** Finds and reads a layout: a path to a JSON file, or the name of a built-in one in layouts/. */
import { join, relative } from 'node:path';
import { readJsonFile } from '../config/read-json-file.js';
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
  const data = await readJsonFile(path, 'layout', shown, 'E_LAYOUT_INVALID', 'give a path to a layout JSON file, or the name of one in layouts/ (e.g. "kubeos")');
  return validateLayout(data, shown);
}
