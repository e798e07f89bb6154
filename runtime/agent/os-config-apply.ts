/**
 * `kubeos agent config apply|status|rollback`: node OS configuration as numbered generations on
 * persist, tried and committed like an upgrade.
 *
 * A generation is a whole configuration (runtime/core/os-config.ts). Applying one converges the
 * host on it: its files written (temp, fsync, rename), its sysctls set, its limits and sysctl.d
 * files rewritten; what the previous generation set and this one does not goes back to what it
 * was before kubeos first touched it (kept in originals.json). Then the health checks in
 * `healthDir` run: all pass, the generation is committed; one fails, the committed one is
 * converged on again and the apply fails with E_CONFIG_ROLLED_BACK.
 *
 * Crash safety: the state records the generation being tried before anything on the host changes.
 * A command that finds such a record (the apply was killed, or the host lost power) converges on
 * the committed generation first, so the committed generation is always the one in force.
 *
 * Kernel command line changes need a trial boot through GRUB's boot counting; this version refuses
 * them with E_CONFIG_UNSUPPORTED rather than apply them without a way back.
 */
import { chmod, lstat, mkdir, open, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { KubeosError } from '../core/errors.js';
import { runCommand } from '../core/exec.js';
import { emptyOSConfig, needsReboot, parseOSConfig, renderLimits, renderSysctl, type OSConfig } from '../core/os-config.js';
import type { AgentConfig } from './agent-config.js';
import { takeLock } from './take-lock.js';

/** The files kubeos writes itself from a generation's sysctl and limits. */
export const sysctlFile = '/etc/sysctl.d/90-kubeos.conf';
export const limitsFile = '/etc/security/limits.d/90-kubeos.conf';
const header = 'Written by kubeos agent config; change the configuration, not this file.';

interface Generation {
  generation: number;
  created: string;
  config: OSConfig;
}

export interface ConfigState {
  /** The generation in force; 0 before any. */
  committed: number;
  /** Committed generations, oldest first; `rollback` goes back one. */
  history: number[];
  /** Set before the host changes, cleared once the generation is committed or undone. */
  trying?: { generation: number; started: string };
  last?: { generation: number; result: 'committed' | 'rolled-back'; reason?: string; at: string };
}

interface Originals {
  /** Before kubeos first wrote the file: its content (base64) and mode, or that there was none. */
  files: Record<string, { existed: false } | { existed: true; content: string; mode: number }>;
  sysctl: Record<string, string>;
}

export type ConfigStep = (line: string) => void;

const dirOf = (agent: AgentConfig) => join(agent.stateDir, 'config');

async function readJson<T>(file: string, fallback: T): Promise<T> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return fallback;
    throw error;
  }
  try {
    return JSON.parse(text) as T;
  } catch (cause) {
    throw new KubeosError('E_STATE_CORRUPT', `the configuration state ${file} is damaged`, { cause, hint: `move it aside (mv ${file} ${file}.damaged) and apply the configuration again`, details: { file } });
  }
}

/** Temp file, fsync, rename, fsync of the directory: a crash leaves the old file or the new one. */
async function writeAtomic(file: string, data: string | Buffer, mode = 0o644): Promise<void> {
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

/** rm of a file that may not be there, even because a parent is not a directory. */
async function removeIfThere(path: string): Promise<void> {
  await rm(path, { force: true }).catch((error: NodeJS.ErrnoException) => {
    if (error.code !== 'ENOTDIR') throw error;
  });
}

const writeJson = (file: string, value: unknown) => writeAtomic(file, `${JSON.stringify(value, null, 2)}\n`, 0o600);

async function readGeneration(agent: AgentConfig, n: number): Promise<OSConfig> {
  if (n === 0) return emptyOSConfig;
  const g = await readJson<Generation | undefined>(join(dirOf(agent), 'generations', `${n}.json`), undefined);
  if (g === undefined) throw new KubeosError('E_STATE_CORRUPT', `configuration generation ${n} is missing from ${join(dirOf(agent), 'generations')}`);
  return g.config;
}

function sysctlPath(agent: AgentConfig, key: string): string {
  return join(agent.configRoot, 'proc/sys', ...key.split('.'));
}

async function readSysctl(agent: AgentConfig, key: string): Promise<string> {
  try {
    return (await readFile(sysctlPath(agent, key), 'utf8')).trim();
  } catch (error) {
    throw new KubeosError('E_CONFIG_INVALID', `sysctl ${key}: this kernel has no ${sysctlPath(agent, key)}`, { cause: error, hint: 'check the key (sysctl -a lists them) or load the module that provides it', details: { key } });
  }
}

/** Every file a configuration puts on the host, kubeos's own sysctl.d and limits.d files included. */
function filesOf(config: OSConfig): Map<string, { content: string; mode: number }> {
  const files = new Map<string, { content: string; mode: number }>();
  for (const f of config.files) files.set(f.path, { content: f.content, mode: f.mode });
  const sysctl = renderSysctl(config, header);
  if (sysctl !== undefined) files.set(sysctlFile, { content: sysctl, mode: 0o644 });
  const limits = renderLimits(config, header);
  if (limits !== undefined) files.set(limitsFile, { content: limits, mode: 0o644 });
  return files;
}

/**
 * Makes the host hold `target`: what any of `undo` set and `target` does not goes back to its
 * original. Idempotent, so a converge cut short is finished by the next one.
 */
async function converge(agent: AgentConfig, target: OSConfig, undo: readonly OSConfig[], step: ConfigStep): Promise<void> {
  const originalsFile = join(dirOf(agent), 'originals.json');
  const originals = await readJson<Originals>(originalsFile, { files: {}, sysctl: {} });
  const wanted = filesOf(target);
  const wantedKeys = new Set(Object.keys(target.sysctl));

  // remember what was there before kubeos first touched it, before touching it
  let remembered = false;
  for (const path of wanted.keys()) {
    if (originals.files[path] !== undefined) continue;
    const where = join(agent.configRoot, path);
    const info = await lstat(where).catch(() => undefined);
    originals.files[path] = info?.isFile() ? { existed: true, content: (await readFile(where)).toString('base64'), mode: info.mode & 0o7777 } : { existed: false };
    remembered = true;
  }
  for (const key of wantedKeys) {
    if (originals.sysctl[key] !== undefined) continue;
    originals.sysctl[key] = await readSysctl(agent, key);
    remembered = true;
  }
  if (remembered) await writeJson(originalsFile, originals);

  for (const [path, file] of wanted) {
    step(`writing ${path}`);
    await writeAtomic(join(agent.configRoot, path), file.content, file.mode);
  }
  const stale = new Set<string>();
  for (const old of undo) for (const path of filesOf(old).keys()) if (!wanted.has(path)) stale.add(path);
  // a write killed between its temp file and the rename leaves the temp file: not part of any generation
  for (const path of new Set([...wanted.keys(), ...stale])) await removeIfThere(`${join(agent.configRoot, path)}.kubeos-tmp`);
  for (const path of [...stale].sort()) {
    const original = originals.files[path];
    const where = join(agent.configRoot, path);
    step(`restoring ${path}`);
    if (original === undefined || !original.existed) await removeIfThere(where);
    else {
      await writeAtomic(where, Buffer.from(original.content, 'base64'), original.mode);
      await chmod(where, original.mode);
    }
  }
  for (const key of [...wantedKeys].sort()) {
    step(`setting sysctl ${key} = ${target.sysctl[key]}`);
    await writeFile(sysctlPath(agent, key), `${target.sysctl[key]}\n`);
  }
  const staleKeys = new Set<string>();
  for (const old of undo) for (const key of Object.keys(old.sysctl)) if (!wantedKeys.has(key)) staleKeys.add(key);
  for (const key of [...staleKeys].sort()) {
    const original = originals.sysctl[key];
    if (original === undefined) continue;
    step(`restoring sysctl ${key} = ${original}`);
    await writeFile(sysctlPath(agent, key), `${original}\n`);
  }
}

async function runHealthChecks(agent: AgentConfig, step: ConfigStep): Promise<string | undefined> {
  const names = await readdir(agent.healthDir).catch(() => [] as string[]);
  for (const name of names.sort()) {
    const check = join(agent.healthDir, name);
    const info = await lstat(check).catch(() => undefined);
    if (!info?.isFile() || (info.mode & 0o111) === 0) continue;
    step(`health check ${name}`);
    try {
      await runCommand([check], { timeoutMs: 120_000 });
    } catch (error) {
      return `health check ${check} failed: ${(error as Error).message.split('\n')[0]}`;
    }
  }
  return undefined;
}

async function readConfigState(agent: AgentConfig): Promise<ConfigState> {
  return readJson<ConfigState>(join(dirOf(agent), 'state.json'), { committed: 0, history: [] });
}

const writeConfigState = (agent: AgentConfig, state: ConfigState) => writeJson(join(dirOf(agent), 'state.json'), state);

/** An apply that did not finish (killed, power lost): back to the committed generation. */
async function recover(agent: AgentConfig, state: ConfigState, step: ConfigStep): Promise<ConfigState> {
  if (state.trying === undefined) return state;
  const interrupted = state.trying.generation;
  step(`generation ${interrupted} did not finish; restoring generation ${state.committed}`);
  const tried = await readGeneration(agent, interrupted).catch(() => emptyOSConfig);
  await converge(agent, await readGeneration(agent, state.committed), [tried], step);
  const next: ConfigState = { committed: state.committed, history: state.history, last: { generation: interrupted, result: 'rolled-back', reason: 'the apply was interrupted', at: new Date().toISOString() } };
  await writeConfigState(agent, next);
  return next;
}

export interface ConfigStatus {
  committed: number;
  trying: number | undefined;
  history: number[];
  last: ConfigState['last'];
  config: OSConfig;
}

export type ApplyResult = { kind: 'committed' | 'unchanged'; generation: number; config: OSConfig };

/** Tries `config` as a new generation: converge, health checks, commit; or undo and E_CONFIG_ROLLED_BACK. */
async function tryGeneration(agent: AgentConfig, state: ConfigState, config: OSConfig, step: ConfigStep, historyAfter: (n: number) => number[]): Promise<ApplyResult> {
  const current = await readGeneration(agent, state.committed);
  const generations = join(dirOf(agent), 'generations');
  await mkdir(generations, { recursive: true });
  const existing = (await readdir(generations)).map((f) => Number.parseInt(f, 10)).filter(Number.isInteger);
  const n = Math.max(state.committed, ...existing, 0) + 1;
  // a key this kernel lacks, or a path that is a directory or a link, fails here, before anything is recorded or changed
  for (const key of Object.keys(config.sysctl)) await readSysctl(agent, key);
  for (const file of config.files) {
    const info = await lstat(join(agent.configRoot, file.path)).catch(() => undefined);
    if (info !== undefined && !info.isFile()) {
      throw new KubeosError('E_CONFIG_INVALID', `files: ${file.path} is ${info.isDirectory() ? 'a directory' : info.isSymbolicLink() ? 'a symbolic link' : 'not a regular file'} on this host; kubeos writes only regular files`, { details: { path: file.path } });
    }
  }
  await writeJson(join(generations, `${n}.json`), { generation: n, created: new Date().toISOString(), config } satisfies Generation);
  await writeConfigState(agent, { ...state, trying: { generation: n, started: new Date().toISOString() } });
  step(`trying generation ${n}`);
  try {
    await converge(agent, config, [current], step);
  } catch (error) {
    // a write that failed (a full disk, a read-only path): back to what was in force, then report it
    step(`generation ${n} could not be applied: ${(error as Error).message}; restoring generation ${state.committed}`);
    await converge(agent, current, [config], step);
    await writeConfigState(agent, { committed: state.committed, history: state.history, last: { generation: n, result: 'rolled-back', reason: (error as Error).message, at: new Date().toISOString() } });
    throw error instanceof KubeosError ? error : new KubeosError('E_CONFIG_ROLLED_BACK', `generation ${n} could not be applied: ${(error as Error).message}; generation ${state.committed} is in force again`, { cause: error, details: { generation: n, committed: state.committed } });
  }
  const failure = await runHealthChecks(agent, step);
  if (failure !== undefined) {
    step(`${failure}; restoring generation ${state.committed}`);
    await converge(agent, current, [config], step);
    await writeConfigState(agent, { committed: state.committed, history: state.history, last: { generation: n, result: 'rolled-back', reason: failure, at: new Date().toISOString() } });
    throw new KubeosError('E_CONFIG_ROLLED_BACK', `generation ${n} was not committed: ${failure}; generation ${state.committed} is in force again`, {
      hint: 'kubeos agent config status shows the generation in force; fix the configuration or the failing check',
      details: { generation: n, committed: state.committed, reason: failure },
    });
  }
  await writeConfigState(agent, { committed: n, history: historyAfter(n), last: { generation: n, result: 'committed', at: new Date().toISOString() } });
  step(`committed generation ${n}`);
  return { kind: 'committed', generation: n, config };
}

async function withConfigLock<T>(agent: AgentConfig, what: string, fn: () => Promise<T>): Promise<T> {
  const lock = await takeLock(agent.runDir, what);
  try {
    return await fn();
  } finally {
    await lock.release().catch(() => {});
  }
}

export async function applyConfig(agent: AgentConfig, input: unknown, where: string, step: ConfigStep = () => {}): Promise<ApplyResult> {
  const config = parseOSConfig(input, where);
  return withConfigLock(agent, 'config apply', async () => {
    const state = await recover(agent, await readConfigState(agent), step);
    const current = await readGeneration(agent, state.committed);
    if (needsReboot(current, config)) {
      throw new KubeosError('E_CONFIG_UNSUPPORTED', `${where}: kernelArgs changes need a trial boot through GRUB's boot counting, which this agent does not do yet; nothing was changed`, {
        hint: 'apply the other settings without kernelArgs (keep kernelArgs as they are in the generation in force)',
        details: { kernelArgs: config.kernelArgs },
      });
    }
    if (JSON.stringify(current) === JSON.stringify(config) && state.committed > 0) return { kind: 'unchanged', generation: state.committed, config };
    return tryGeneration(agent, state, config, step, (n) => [...state.history, n]);
  });
}

export async function configRollback(agent: AgentConfig, step: ConfigStep = () => {}): Promise<ApplyResult> {
  return withConfigLock(agent, 'config rollback', async () => {
    const state = await recover(agent, await readConfigState(agent), step);
    const previous = state.history.at(-2);
    if (previous === undefined) {
      throw new KubeosError('E_CONFIG_NO_PREVIOUS', state.committed === 0 ? 'no configuration was ever committed here' : `generation ${state.committed} is the first committed one: there is nothing to roll back to`, {
        hint: 'kubeos agent config status shows the history',
      });
    }
    // the previous generation's configuration, tried as a new generation that takes the place of both
    return tryGeneration(agent, state, await readGeneration(agent, previous), step, (n) => [...state.history.slice(0, -2), n]);
  });
}

export async function configStatus(agent: AgentConfig, step: ConfigStep = () => {}): Promise<ConfigStatus> {
  const state = await readConfigState(agent);
  const settled = state.trying === undefined ? state : await withConfigLock(agent, 'config status', async () => recover(agent, await readConfigState(agent), step));
  return { committed: settled.committed, trying: settled.trying?.generation, history: settled.history, last: settled.last, config: await readGeneration(agent, settled.committed) };
}
