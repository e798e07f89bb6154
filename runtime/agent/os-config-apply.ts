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
 * Kernel arguments need a trial boot: the generation's other settings are applied, its arguments go
 * into the GRUB environment as kubeos_args_try with bootTries tries, and the host reboots. The boot
 * hook runs the health checks on that boot (kubeos.config=trying) and commits (`agent config
 * commit`: the arguments become the slot's kubeos_args_A/B), or reboots; when the tries run out,
 * GRUB boots the committed arguments again (kubeos.config=fallback) and the next `agent config`
 * command undoes the rest of the generation and reports it rolled back.
 */
import { lstat, mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { KubeosError } from '../core/errors.js';
import { runCommand } from '../core/exec.js';
import { emptyOSConfig, needsReboot, parseOSConfig, renderLimits, renderSysctl, type OSConfig } from '../core/os-config.js';
import type { Slot } from '../core/boot-env.js';
import type { AgentConfig } from './agent-config.js';
import { readBooted, type Booted } from './read-booted.js';
import { readJsonFile, writeFileAtomic } from './atomic-file.js';
import { readBootEnv, writeBootEnv } from './boot-env-store.js';
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
  trying?: { generation: number; started: string; kind?: 'runtime' | 'boot' };
  last?: { generation: number; result: 'committed' | 'rolled-back'; reason?: string; at: string };
  /**
   * The generation last committed on each slot, with the version that slot ran then: a slot that
   * boots again runs its own configuration (after a fallback or a rollback to it); a slot with a
   * new version carries over the one in force.
   */
  slots?: Partial<Record<Slot, { generation: number; version: string }>>;
}

interface Originals {
  /** Before kubeos first wrote the file: its content (base64) and mode, or that there was none. */
  files: Record<string, { existed: false } | { existed: true; content: string; mode: number }>;
  sysctl: Record<string, string>;
}

export type ConfigStep = (line: string) => void;

const dirOf = (agent: AgentConfig) => join(agent.stateDir, 'config');

const readJson = <T>(file: string, missing: T) => readJsonFile<T>(file, missing, 'the configuration state', 'then apply the configuration again');
const writeAtomic = writeFileAtomic;

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
      // runCommand's message is "CHECK failed: its stderr" (or how it ended)
      return `health check ${(error as Error).message.split('\n')[0]}`;
    }
  }
  return undefined;
}

async function readConfigState(agent: AgentConfig): Promise<ConfigState> {
  return readJson<ConfigState>(join(dirOf(agent), 'state.json'), { committed: 0, history: [] });
}

const writeConfigState = (agent: AgentConfig, state: ConfigState) => writeJson(join(dirOf(agent), 'state.json'), state);

const keepSlots = (state: ConfigState): Pick<ConfigState, 'slots'> => (state.slots === undefined ? {} : { slots: state.slots });

/** The slot records once generation `n` is committed on the booted slot (unchanged when the slot cannot be told). */
async function slotsAfter(agent: AgentConfig, state: ConfigState, n: number, booted?: Booted): Promise<ConfigState['slots']> {
  const here = booted ?? await readBooted(agent.runDir, agent.osRelease).catch(() => undefined);
  if (here === undefined) return state.slots;
  return { ...state.slots, [here.slot]: { generation: n, version: here.version } };
}

/**
 * A slot that booted again with the version it had: its own generation comes back into force (after
 * a fallback or a rollback to it). A slot with a new version (an upgrade) carries over the one in
 * force and records it. Nothing happens while a generation is on trial.
 */
async function settleSlot(agent: AgentConfig, state: ConfigState, step: ConfigStep): Promise<ConfigState> {
  if (state.trying !== undefined) return state;
  const booted = await readBooted(agent.runDir, agent.osRelease).catch(() => undefined);
  if (booted === undefined) return state;
  const own = state.slots?.[booted.slot];
  if (own !== undefined && own.version === booted.version && own.generation === state.committed) return state;
  if (own === undefined || own.version !== booted.version) {
    if (state.committed === 0) return state;
    const next: ConfigState = { ...state, slots: { ...state.slots, [booted.slot]: { generation: state.committed, version: booted.version } } };
    await writeConfigState(agent, next);
    return next;
  }
  step(`slot ${booted.slot} (${booted.version}) booted again: restoring its generation ${own.generation} in place of ${state.committed}`);
  await converge(agent, await readGeneration(agent, own.generation), [await readGeneration(agent, state.committed)], step);
  const next: ConfigState = {
    slots: state.slots, committed: own.generation, history: [...state.history.filter((g) => g !== own.generation), own.generation],
    last: { generation: own.generation, result: 'committed', reason: `slot ${booted.slot} booted again with its own configuration`, at: new Date().toISOString() },
  };
  await writeConfigState(agent, next);
  return next;
}

/** How this boot's kernel arguments came to be (the initramfs records kubeos.config=). */
async function configBoot(agent: AgentConfig): Promise<'good' | 'trying' | 'fallback'> {
  const text = (await readFile(join(agent.runDir, 'config-boot'), 'utf8').catch(() => 'good')).trim();
  return text === 'trying' || text === 'fallback' ? text : 'good';
}

/**
 * An apply that did not finish (killed, power lost), or a trial boot of kernel arguments that GRUB
 * gave up on: back to the committed generation. A trial boot still pending (before its reboot, or
 * this boot is the trial) is left alone.
 */
async function recover(agent: AgentConfig, state: ConfigState, step: ConfigStep): Promise<ConfigState> {
  if (state.trying === undefined) return state;
  const interrupted = state.trying.generation;
  let reason = 'the apply was interrupted';
  if (state.trying.kind === 'boot') {
    const boot = await configBoot(agent);
    const { env, vars } = await readBootEnv(agent.bootEnv);
    if (boot === 'trying') return state;
    if (boot === 'good' && (vars['kubeos_args_try'] ?? '') !== '') return state;
    if (boot === 'fallback') reason = `the kernel arguments of generation ${interrupted} did not come up healthy in ${agent.bootTries} boots; GRUB booted the committed ones`;
    if ((vars['kubeos_args_try'] ?? '') !== '') await writeBootEnv(agent.bootEnv, env, { ...vars, kubeos_args_try: '', kubeos_args_tries: '0' });
  }
  step(`generation ${interrupted} was not committed (${reason}); restoring generation ${state.committed}`);
  const tried = await readGeneration(agent, interrupted).catch(() => emptyOSConfig);
  await converge(agent, await readGeneration(agent, state.committed), [tried], step);
  const next: ConfigState = { ...keepSlots(state), committed: state.committed, history: state.history, last: { generation: interrupted, result: 'rolled-back', reason, at: new Date().toISOString() } };
  await writeConfigState(agent, next);
  return next;
}

export interface ConfigStatus {
  committed: number;
  trying: number | undefined;
  history: number[];
  last: ConfigState['last'];
  config: OSConfig;
  /** The configuration the last attempt was about (committed or rolled back). */
  lastConfig: OSConfig | undefined;
  /** The configuration on trial. */
  tryingConfig: OSConfig | undefined;
}

export type ApplyResult = { kind: 'committed' | 'unchanged'; generation: number; config: OSConfig } | { kind: 'trying'; generation: number; config: OSConfig; rebooting: boolean };

/** Tries `config` as a new generation: converge, health checks, commit; or undo and E_CONFIG_ROLLED_BACK. */
/** Checks that need the host, then the new generation's number and file. Nothing on the host changes. */
async function newGeneration(agent: AgentConfig, state: ConfigState, config: OSConfig): Promise<number> {
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
  return n;
}

async function tryGeneration(agent: AgentConfig, state: ConfigState, config: OSConfig, step: ConfigStep, historyAfter: (n: number) => number[]): Promise<ApplyResult> {
  const current = await readGeneration(agent, state.committed);
  const n = await newGeneration(agent, state, config);
  await writeConfigState(agent, { ...state, trying: { generation: n, started: new Date().toISOString(), kind: 'runtime' } });
  step(`trying generation ${n}`);
  try {
    await converge(agent, config, [current], step);
  } catch (error) {
    // a write that failed (a full disk, a read-only path): back to what was in force, then report it
    step(`generation ${n} could not be applied: ${(error as Error).message}; restoring generation ${state.committed}`);
    await converge(agent, current, [config], step);
    await writeConfigState(agent, { ...keepSlots(state), committed: state.committed, history: state.history, last: { generation: n, result: 'rolled-back', reason: (error as Error).message, at: new Date().toISOString() } });
    throw error instanceof KubeosError ? error : new KubeosError('E_CONFIG_ROLLED_BACK', `generation ${n} could not be applied: ${(error as Error).message}; generation ${state.committed} is in force again`, { cause: error, details: { generation: n, committed: state.committed } });
  }
  const failure = await runHealthChecks(agent, step);
  if (failure !== undefined) {
    step(`${failure}; restoring generation ${state.committed}`);
    await converge(agent, current, [config], step);
    await writeConfigState(agent, { ...keepSlots(state), committed: state.committed, history: state.history, last: { generation: n, result: 'rolled-back', reason: failure, at: new Date().toISOString() } });
    throw new KubeosError('E_CONFIG_ROLLED_BACK', `generation ${n} was not committed: ${failure}; generation ${state.committed} is in force again`, {
      hint: 'kubeos agent config status shows the generation in force; fix the configuration or the failing check',
      details: { generation: n, committed: state.committed, reason: failure },
    });
  }
  await writeConfigState(agent, { slots: await slotsAfter(agent, state, n), committed: n, history: historyAfter(n), last: { generation: n, result: 'committed', at: new Date().toISOString() } });
  step(`committed generation ${n}`);
  return { kind: 'committed', generation: n, config };
}

/**
 * A generation whose kernel arguments changed: its other settings now, its arguments on a trial
 * boot (kubeos_args_try). Only from a good boot with no slot or arguments on trial.
 */
async function tryBootGeneration(agent: AgentConfig, state: ConfigState, config: OSConfig, where: string, step: ConfigStep, reboot: boolean): Promise<ApplyResult> {
  if (config.kernelArgs.remove.length > 0) {
    throw new KubeosError('E_CONFIG_UNSUPPORTED', `${where}: kernelArgs.remove takes arguments off the image's own command line, which is set at build time; nothing was changed`, {
      hint: 'remove them in image.json (config.kernelArgs.remove, or kernel.cmdline) and build the next release',
    });
  }
  const booted = await readBooted(agent.runDir, agent.osRelease);
  const { env, vars } = await readBootEnv(agent.bootEnv);
  if (booted.kind !== 'good' || env.trying !== undefined || (vars['kubeos_args_try'] ?? '') !== '') {
    throw new KubeosError('E_CONFIG_UNSUPPORTED', `${where}: new kernel arguments are tried on a good boot with nothing else on trial; this boot is ${booted.kind}${env.trying === undefined ? '' : `, slot ${env.trying} is on trial`}; nothing was changed`, {
      hint: 'commit (or roll back) the upgrade on trial first, then apply again',
    });
  }
  const current = await readGeneration(agent, state.committed);
  const n = await newGeneration(agent, state, config);
  await writeConfigState(agent, { ...state, trying: { generation: n, started: new Date().toISOString(), kind: 'boot' } });
  step(`trying generation ${n} (its kernel arguments need a trial boot)`);
  await converge(agent, config, [current], step);
  step(`kernel arguments on trial for ${agent.bootTries} boots: ${config.kernelArgs.add.join(' ') || '(none)'}`);
  // "-" stands for none: GRUB's load_env keeps an empty value and kubeos_args_try must be set to try
  await writeBootEnv(agent.bootEnv, env, { ...vars, kubeos_args_try: config.kernelArgs.add.join(' ') || 'kubeos.args=none', kubeos_args_tries: String(agent.bootTries) });
  if (reboot) {
    step('rebooting into the trial');
    await runCommand(agent.reboot, { timeoutMs: 60_000 });
  }
  return { kind: 'trying', generation: n, config, rebooting: reboot };
}

/** After a healthy trial boot of new kernel arguments (the boot hook calls it): they become the slot's. */
export async function commitConfigBoot(agent: AgentConfig, step: ConfigStep = () => {}): Promise<ApplyResult> {
  return withConfigLock(agent, 'config commit', async () => {
    const state = await readConfigState(agent);
    if (state.trying?.kind !== 'boot' || (await configBoot(agent)) !== 'trying') {
      throw new KubeosError('E_CONFIG_NO_PREVIOUS', 'no kernel arguments are on trial in this boot: nothing to commit', { hint: 'kubeos agent config status shows what is in force' });
    }
    const n = state.trying.generation;
    const config = await readGeneration(agent, n);
      const booted = await readBooted(agent.runDir, agent.osRelease);
    const { env, vars } = await readBootEnv(agent.bootEnv);
    await writeBootEnv(agent.bootEnv, env, { ...vars, [`kubeos_args_${booted.slot}`]: config.kernelArgs.add.join(' '), kubeos_args_try: '', kubeos_args_tries: '0' });
    await writeConfigState(agent, { slots: await slotsAfter(agent, state, n, booted), committed: n, history: [...state.history, n], last: { generation: n, result: 'committed', at: new Date().toISOString() } });
    step(`committed generation ${n} with its kernel arguments on slot ${booted.slot}`);
    return { kind: 'committed', generation: n, config };
  });
}

async function withConfigLock<T>(agent: AgentConfig, what: string, fn: () => Promise<T>): Promise<T> {
  const lock = await takeLock(agent.runDir, what);
  try {
    return await fn();
  } finally {
    await lock.release().catch(() => {});
  }
}

export async function applyConfig(agent: AgentConfig, input: unknown, where: string, step: ConfigStep = () => {}, options: { reboot?: boolean } = {}): Promise<ApplyResult> {
  const config = parseOSConfig(input, where);
  return withConfigLock(agent, 'config apply', async () => {
    const state = await settleSlot(agent, await recover(agent, await readConfigState(agent), step), step);
    if (state.trying !== undefined) {
      throw new KubeosError('E_CONFIG_UNSUPPORTED', `${where}: generation ${state.trying.generation} is on trial (its kernel arguments wait for a reboot or for its health checks); nothing was changed`, {
        hint: 'reboot to try it (or let the boot commit it), then apply again; kubeos agent config status shows it',
      });
    }
    const current = await readGeneration(agent, state.committed);
    if (needsReboot(current, config)) return tryBootGeneration(agent, state, config, where, step, options.reboot !== false);
    if (JSON.stringify(current) === JSON.stringify(config) && state.committed > 0) return { kind: 'unchanged', generation: state.committed, config };
    return tryGeneration(agent, state, config, step, (n) => [...state.history, n]);
  });
}

export async function configRollback(agent: AgentConfig, step: ConfigStep = () => {}): Promise<ApplyResult> {
  return withConfigLock(agent, 'config rollback', async () => {
    const state = await settleSlot(agent, await recover(agent, await readConfigState(agent), step), step);
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
  // settling takes the lock: only when an apply was cut short or this slot's record is out of date
  const booted = await readBooted(agent.runDir, agent.osRelease).catch(() => undefined);
  const own = booted === undefined ? undefined : state.slots?.[booted.slot];
  const slotSettled = booted === undefined || (state.committed === 0 && own === undefined) || (own !== undefined && own.version === booted.version && own.generation === state.committed);
  const settled = state.trying === undefined && slotSettled ? state
    : await withConfigLock(agent, 'config status', async () => settleSlot(agent, await recover(agent, await readConfigState(agent), step), step));
  const generation = async (n: number | undefined) => (n === undefined ? undefined : readGeneration(agent, n).catch(() => undefined));
  return {
    committed: settled.committed,
    trying: settled.trying?.generation,
    history: settled.history,
    last: settled.last,
    config: await readGeneration(agent, settled.committed),
    lastConfig: await generation(settled.last?.generation),
    tryingConfig: await generation(settled.trying?.generation),
  };
}
