/**
 * The agent's configuration, /usr/lib/kubeos/agent.json in an image (the builder writes it), or any
 * file given with --config (tests point the slots at file-backed disk images).
 */
import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import type { Slot } from '../core/boot-env.js';
import { parseUpdateSource } from '../core/channel/layout.js';
import { KubeosError } from '../core/errors.js';

/** Where the builder puts it: in the read-only root, so it always matches the booted image. */
export const defaultConfigPath = '/usr/lib/kubeos/agent.json';

/** A slot is a GPT partition found by name, or a byte range of a file or device. */
export type SlotLocation = { partition: string } | { path: string; offset?: number; size?: number };

/** Who decides when this host upgrades: its own daemon following a channel, or the cluster's operator. */
export const updateModes = ['channel', 'cluster'] as const;
export type UpdateMode = (typeof updateModes)[number];

export interface AgentConfig {
  compatible: string;
  bootTries: number;
  /** The image server's base URL (channels/ and bundles/ sit under it), set at build time. */
  updateServer: string | undefined;
  /** The channel name the daemon follows (default for `agent upgrade`). */
  channel: string | undefined;
  /**
   * `channel`: `agent daemon` polls the channel and upgrades on its own; `cluster`: only the
   * cluster (the operator, through `agent daemon --kubernetes`) starts upgrades, so a node never
   * upgrades itself outside a rollout.
   */
  updates: UpdateMode;
  /** PEM public keys trusted for bundles and channel indexes. */
  trustedKeys: string[];
  bootEnv: string;
  stateDir: string;
  slots: Record<Slot, SlotLocation>;
  /** Where the initramfs recorded the booted slot and how it booted (good, trying, fallback). */
  runDir: string;
  osRelease: string;
  /** Seconds between channel polls in `daemon`, and the random spread added to each. */
  pollSeconds: number;
  jitterSeconds: number;
  reboot: string[];
  /** Bounds each channel index fetch, and each stretch of a bundle download without data (seconds). */
  networkTimeoutSeconds: number;
  /** A bundle download slower than this over twice networkTimeoutSeconds is resumed, then given up (0: no floor). */
  minDownloadBytesPerSecond: number;
  /** Where `agent config` finds /etc and /proc/sys: "/" on a host; a test points it at a directory. */
  configRoot: string;
  /** The health checks `agent config apply` runs before it commits (the boot hook runs the same). */
  healthDir: string;
}

function fail(file: string, message: string): never {
  throw new KubeosError('E_USAGE', `agent config ${file}: ${message}`, { hint: `see ${defaultConfigPath} in an image for an example` });
}

export async function loadAgentConfig(file = defaultConfigPath): Promise<AgentConfig> {
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(await readFile(file, 'utf8')) as Record<string, unknown>;
  } catch (error) {
    throw new KubeosError('E_USAGE', `cannot read agent config ${file}: ${(error as Error).message}`, { cause: error });
  }
  const base = dirname(resolve(file));
  const path = (value: unknown, key: string, fallback?: string): string => {
    const v = value ?? fallback;
    if (typeof v !== 'string' || v === '') fail(file, `${key} must be a path`);
    return resolve(base, v);
  };
  const slots = raw['slots'] as Record<string, SlotLocation> | undefined;
  if (!slots || typeof slots !== 'object' || !slots['A'] || !slots['B']) fail(file, 'slots must name A and B');
  const fix = (slot: SlotLocation): SlotLocation => ('partition' in slot ? slot : { ...slot, path: resolve(base, slot.path) });
  const keys = raw['trustedKeys'];
  if (!Array.isArray(keys)) fail(file, 'trustedKeys must list public key files (an empty list trusts no bundle)');
  if (typeof raw['compatible'] !== 'string') fail(file, 'compatible must be a string');
  const source = parseUpdateSource(`agent config ${file}`, typeof raw['channel'] === 'string' ? raw['channel'] : undefined, typeof raw['updateServer'] === 'string' ? raw['updateServer'] : undefined);
  const updates = raw['updates'] ?? 'channel';
  if (!(updateModes as readonly unknown[]).includes(updates)) fail(file, `updates must be ${updateModes.join(' or ')}, got ${JSON.stringify(updates)}`);
  return {
    compatible: raw['compatible'],
    bootTries: typeof raw['bootTries'] === 'number' ? raw['bootTries'] : 3,
    updateServer: source.updateServer,
    channel: source.channel,
    updates: updates as UpdateMode,
    trustedKeys: keys.map((k, i) => path(k, `trustedKeys[${i}]`)),
    bootEnv: path(raw['bootEnv'], 'bootEnv', '/boot/efi/EFI/BOOT/grubenv'),
    stateDir: path(raw['stateDir'], 'stateDir', '/persist/.kubeos/agent'),
    slots: { A: fix(slots['A']), B: fix(slots['B']) },
    runDir: path(raw['runDir'], 'runDir', '/run/kubeos'),
    osRelease: path(raw['osRelease'], 'osRelease', '/etc/os-release'),
    pollSeconds: typeof raw['pollSeconds'] === 'number' ? raw['pollSeconds'] : 300,
    jitterSeconds: typeof raw['jitterSeconds'] === 'number' ? raw['jitterSeconds'] : 60,
    reboot: Array.isArray(raw['reboot']) ? (raw['reboot'] as string[]) : ['reboot'],
    networkTimeoutSeconds: typeof raw['networkTimeoutSeconds'] === 'number' && raw['networkTimeoutSeconds'] > 0 ? raw['networkTimeoutSeconds'] : 30,
    minDownloadBytesPerSecond: typeof raw['minDownloadBytesPerSecond'] === 'number' && raw['minDownloadBytesPerSecond'] >= 0 ? raw['minDownloadBytesPerSecond'] : 4096,
    configRoot: path(raw['configRoot'], 'configRoot', '/'),
    healthDir: path(raw['healthDir'], 'healthDir', '/etc/kubeos/health.d'),
  };
}
