/** Validation that reports every problem at once, each with the file, the JSON path, the expected and the actual value. */
import { closestName } from '../../runtime/core/closest-name.js';
import { KubeosError, type ErrorCode } from '../../runtime/core/errors.js';

export interface Problem {
  path: string;
  expected: string;
  actual: string;
  code: ErrorCode;
}

export class Problems {
  readonly list: Problem[] = [];

  add(path: string, expected: string, actual: unknown, code: ErrorCode): void {
    this.list.push({ path, expected, actual: actual === undefined ? 'nothing' : JSON.stringify(actual), code });
  }

  /** Throws one KubeosError listing all problems; its code is the one all problems share, else `fallback`. */
  throwIfAny(what: string, file: string, fallback: ErrorCode, hint: string): void {
    if (this.list.length === 0) return;
    const first = this.list[0]?.code;
    const code = this.list.every((p) => p.code === first) && first !== undefined ? first : fallback;
    const lines = this.list.map((p) => `  ${file}: ${p.path}: expected ${p.expected}, got ${p.actual}`);
    throw new KubeosError(code, `${what} ${file} has ${this.list.length} problem${this.list.length > 1 ? 's' : ''}:\n${lines.join('\n')}`, {
      hint,
      details: { file, problems: this.list },
    });
  }
}

export function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function checkKnownKeys(problems: Problems, at: string, obj: Record<string, unknown>, known: readonly string[], code: ErrorCode): void {
  for (const key of Object.keys(obj)) {
    if (known.includes(key)) continue;
    const fields = known.filter((k) => !k.startsWith('$'));
    const mean = closestName(key, fields);
    problems.add(at ? `${at}.${key}` : key, `${mean === undefined ? '' : `"${mean}" (did you mean it?), or `}one of the known fields (${fields.join(', ')})`, key, code);
  }
}
