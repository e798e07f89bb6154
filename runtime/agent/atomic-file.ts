/**
 * The agent's files on persist (its state, configuration generations): written to a temporary
 * file, synced and renamed, with the directory synced, so a crash leaves the old file or the new
 * one whole; read back as JSON, a damaged one reported by name, never taken for a missing one.
 */
import { mkdir, open, readFile, rename } from 'node:fs/promises';
import { dirname } from 'node:path';
import { KubeosError } from '../core/errors.js';

export async function writeFileAtomic(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
  await mkdir(dirname(file), { recursive: true });
  const tmp = `${file}.kubeos-tmp`;
  const handle = await open(tmp, 'w', mode);
  try {
    await handle.writeFile(data);
    await handle.chmod(mode);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(tmp, file);
  const dir = await open(dirname(file), 'r');
  await dir.sync().finally(() => dir.close());
}

/** The parsed file, `missing` when there is none; E_STATE_CORRUPT naming it when it does not parse. */
export async function readJsonFile<T>(file: string, missing: T, what: string, fix: string): Promise<T> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return missing;
    throw new KubeosError('E_STATE_CORRUPT', `cannot read ${what} ${file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error, details: { file } });
  }
  try {
    const parsed = JSON.parse(text) as unknown;
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed as T;
  } catch (error) {
    throw new KubeosError('E_STATE_CORRUPT', `${what} ${file} is damaged (${text.length} bytes, ${(error as Error).message})`, {
      cause: error,
      hint: `move it aside (mv ${file} ${file}.damaged): ${fix}`,
      details: { file, bytes: text.length },
    });
  }
}
