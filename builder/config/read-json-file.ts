/** Reads a JSON configuration file (a layout, an image definition); unreadable or malformed → `code`, naming the file. */
import { readFile } from 'node:fs/promises';
import { KubeosError, type ErrorCode } from '../../runtime/core/errors.js';

export async function readJsonFile(path: string, what: string, shown: string, code: ErrorCode, hint: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (error) {
    throw new KubeosError(code, `cannot read ${what} ${shown}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error, hint, details: { file: shown } });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (error) {
    throw new KubeosError(code, `${what} ${shown} is not valid JSON: ${(error as Error).message}`, { cause: error, details: { file: shown } });
  }
}
