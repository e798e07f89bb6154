/**
 * Usage errors of both CLIs (`kubeos` and the agent bin in images): yargs's message as E_USAGE,
 * with "did you mean" for a misspelt option (runtime/core/closest-name.ts), and whether --json was asked
 * for, read from the words as yargs would (--json, --json=true; --no-json and --json=false win).
 */
import { closestName } from '../core/closest-name.js';
import { KubeosError } from '../core/errors.js';

/** What yargs passes to fail(): its usage object, whose descriptions are keyed by the options it knows. */
type YargsUsage = { getDescriptions?: () => Record<string, unknown> } | undefined;

function suggestion(unknown: string, known: readonly string[]): string | undefined {
  return closestName(unknown.replace(/^-+/, '').replace(/=.*$/, ''), known);
}

export function usageError(message: string, usage: YargsUsage, hint: string): KubeosError {
  // yargs names a dashed option twice, as written and camelCased: keep the written one
  const listed = /^Unknown arguments?: (.+)$/.exec(message)?.[1]?.split(', ');
  if (listed === undefined) return new KubeosError('E_USAGE', message, { hint });
  const unknown = listed.filter((u) => !listed.some((other) => other !== u && other.includes('-') && other.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase()) === u));
  const known = Object.keys(usage?.getDescriptions?.() ?? {}).filter((k) => k.length > 1 && !/[A-Z]/.test(k));
  const ideas = unknown.map((u) => [u, suggestion(u, known)] as const).filter(([, s]) => s !== undefined);
  const mean = ideas.map(([u, s]) => (ideas.length === 1 ? `--${s}` : `--${s} for --${u}`)).join(', ');
  const text = `Unknown ${unknown.length === 1 ? 'option' : 'options'}: ${unknown.map((u) => (u.length > 1 ? `--${u}` : `-${u}`)).join(', ')}`;
  return new KubeosError('E_USAGE', ideas.length > 0 ? `${text}; did you mean ${mean}?` : text, { hint, details: { unknown } });
}

export function wantsJson(argv: readonly string[]): boolean {
  let json = false;
  for (const word of argv) {
    if (word === '--') break;
    if (word === '--json' || word === '--json=true') json = true;
    if (word === '--no-json' || word === '--json=false') json = false;
  }
  return json;
}

/**
 * yargs turns an option given twice into a list, which a command expecting one value then trips
 * over (`--endpoint a --endpoint b` crashed publish): refuse it, except for list options.
 */
/** The list options a yargs instance declares (getOptions is not in @types/yargs). */
export function listOptionsOf(instance: unknown): string[] {
  const options = (instance as { getOptions?: () => { array?: string[] } }).getOptions?.();
  return options?.array ?? [];
}

export function refuseRepeatedOptions(argv: Record<string, unknown>, listOptions: readonly string[]): void {
  const lists = new Set(listOptions);
  const dashed = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
  for (const [key, value] of Object.entries(argv)) {
    if (key === '_' || key === '$0' || !Array.isArray(value) || lists.has(key) || lists.has(dashed(key))) continue;
    if (/[A-Z]/.test(key) && dashed(key) in argv) continue; // yargs's camelCase twin of a dashed option
    throw new KubeosError('E_USAGE', `--${key} was given ${value.length} times (${value.map((v) => JSON.stringify(v)).join(', ')}); it takes one value`, { hint: 'give it once', details: { option: key, values: value } });
  }
}
