/**
 * A host on files: one disk image with two slots, a GRUB environment block, /run/kubeos and an
 * os-release, plus an agent config pointing at them. Slot A holds "v1"; a bundle holds "v2".
 */
import { createHash, randomBytes } from 'node:crypto';
import { chmod, mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { bootEnvToGrub, initialBootEnv, type BootEnv, type Slot } from '../../runtime/core/boot-env.js';
import { encodeGrubEnv } from '../../runtime/core/grubenv.js';
import { loadAgentConfig, type AgentConfig } from '../../runtime/agent/agent-config.js';
import { makeBundle, makeKeys, metadata, type TestKeys } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';

export const MiB = 1024 * 1024;
export const slotSize = 8 * MiB;
export const slotOffsets: Record<Slot, number> = { A: MiB, B: MiB + slotSize };

export interface Host {
  dir: string;
  disk: string;
  bootEnv: string;
  runDir: string;
  osRelease: string;
  configPath: string;
  config: AgentConfig;
  keys: TestKeys;
  v1Sha256: string;
}

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export async function readSlot(host: Host, slot: Slot, bytes = slotSize): Promise<Buffer> {
  const handle = await open(host.disk, 'r');
  try {
    const buffer = Buffer.alloc(bytes);
    await handle.read(buffer, 0, bytes, slotOffsets[slot]);
    return buffer;
  } finally {
    await handle.close();
  }
}

/** Pretends the host rebooted into `slot`, as the initramfs records it. */
export async function bootInto(host: Host, slot: Slot, kind: 'good' | 'trying' | 'fallback', version: string): Promise<void> {
  await writeFile(join(host.runDir, 'slot'), `${slot}\n`);
  await writeFile(join(host.runDir, 'boot'), `${kind}\n`);
  await writeFile(host.osRelease, `NAME=kubeos\nVERSION_ID=${version}\n`);
}

export async function setBootEnv(host: Host, env: BootEnv): Promise<void> {
  await writeFile(host.bootEnv, encodeGrubEnv(bootEnvToGrub(env)));
}

export async function makeHost(t: ExecutionContext, options: { channel?: string } = {}): Promise<Host> {
  const dir = await makeTempDir(t, 'kubeos-host-');
  const keys = await makeKeys(dir);
  const disk = join(dir, 'disk.img');
  const v1 = randomBytes(slotSize);
  await writeFile(disk, Buffer.concat([Buffer.alloc(MiB), v1, Buffer.alloc(slotSize), Buffer.alloc(MiB)]));
  const bootEnv = join(dir, 'grubenv');
  await writeFile(bootEnv, encodeGrubEnv(bootEnvToGrub(initialBootEnv)));
  const runDir = join(dir, 'run');
  await mkdir(runDir);
  const osRelease = join(dir, 'os-release');
  const configPath = join(dir, 'agent.json');
  await writeFile(configPath, JSON.stringify({
    compatible: metadata.compatible,
    bootTries: 3,
    channel: options.channel,
    trustedKeys: [keys.publicPath],
    bootEnv,
    stateDir: join(dir, 'state'),
    runDir,
    osRelease,
    slots: { A: { path: disk, offset: slotOffsets.A, size: slotSize }, B: { path: disk, offset: slotOffsets.B, size: slotSize } },
    reboot: ['true'],
  }));
  const host: Host = { dir, disk, bootEnv, runDir, osRelease, configPath, config: await loadAgentConfig(configPath), keys, v1Sha256: sha256(v1) };
  await bootInto(host, 'A', 'good', '1.0.0');
  return host;
}

export async function makeV2(host: Host, options: { version?: string; name?: string; size?: number } = {}) {
  return makeBundle(host.dir, host.keys, { size: options.size ?? 6 * MiB, version: options.version ?? '2.0.0', name: options.name ?? 'v2' });
}

export async function snapshot(host: Host): Promise<{ env: Buffer; slotA: string }> {
  return { env: await readFile(host.bootEnv), slotA: sha256(await readSlot(host, 'A')) };
}

/** A channel whose current release is 3.0.0 and which still lists 2.0.0, served on 127.0.0.1. */
export async function serveTwoReleases(t: ExecutionContext, host: Host) {
  const v2 = await makeV2(host);
  const v3 = await makeV2(host, { version: '3.0.0', name: 'v3' });
  const site = join(host.dir, 'site');
  await publishToDir(site, v3, host.keys.privateKey, { serial: 2, earlier: [v2] });
  return { v2, v3, server: await startUpdateServer(t, site) };
}

export interface ConfigHost {
  agent: AgentConfig;
  configPath: string;
  /** The host's / for `agent config`: its /etc, and /proc/sys as a FAKE of files (a test must not set this machine's kernel parameters). */
  root: string;
  health: string;
  host: Host;
}

/** A host for `agent config`: a root with a few sysctls and an image's containerd config.toml, and an empty health.d. */
export async function makeConfigHost(t: ExecutionContext): Promise<ConfigHost> {
  const host = await makeHost(t);
  const root = join(host.dir, 'root');
  const health = join(host.dir, 'health.d');
  await mkdir(health, { recursive: true });
  for (const [key, value] of Object.entries({ 'vm/swappiness': '60', 'net/ipv4/ip_forward': '0', 'kernel/pid_max': '32768', 'fs/inotify/max_user_watches': '8192' })) {
    await mkdir(join(root, 'proc/sys', key, '..'), { recursive: true });
    await writeFile(join(root, 'proc/sys', key), `${value}\n`);
  }
  await mkdir(join(root, 'etc/containerd'), { recursive: true });
  await writeFile(join(root, 'etc/containerd/config.toml'), 'version = 2 # from the image\n', { mode: 0o600 });
  await chmod(join(root, 'etc/containerd/config.toml'), 0o600);
  const raw = JSON.parse(await readFile(host.configPath, 'utf8')) as Record<string, unknown>;
  const configPath = join(host.dir, 'agent-config.json');
  await writeFile(configPath, JSON.stringify({ ...raw, configRoot: root, healthDir: health }));
  return { agent: await loadAgentConfig(configPath), configPath, root, health, host };
}
