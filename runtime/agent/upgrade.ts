/**
 * `kubeos agent upgrade`: the one path that changes what a host boots. Order matters and is the
 * safety argument:
 *   1. lock; 2. verify the channel index and the bundle manifest before reading a payload byte;
 *   3. make sure the boot environment does not name the standby slot, then stream the verified
 *      payload into the standby slot only; 4. sync and read the slot back against the signed
 *      sha256; 5. only then point the boot environment at it (tries counted by GRUB); 6. reboot.
 * A failure or a kill at any point leaves an environment that boots what booted before.
 */
import { pipeline } from 'node:stream/promises';
import { otherSlot, type Slot } from '../core/boot-env.js';
import { ChunkPool } from '../core/bundle/chunk-pool.js';
import { readBundle } from '../core/bundle/read-bundle.js';
import { fetchChannel, checkBundleMatchesChannel } from '../core/channel/fetch-channel.js';
import { loadTrustedKeys } from '../core/crypto/keys.js';
import { compareVersions } from '../core/compare-versions.js';
import { isKubeosError, KubeosError } from '../core/errors.js';
import { runCommand } from '../core/exec.js';
import type { AgentConfig } from './agent-config.js';
import { readState, writeState } from './agent-state.js';
import { readBootEnv, writeBootEnv } from './boot-env-store.js';
import { openSource } from './fetch-resumable.js';
import { openSlotWriter, resolveSlot } from './open-slot.js';
import { planForgetStandby, planTryStandby } from './plan-boot-env.js';
import { readBooted } from './read-booted.js';
import { takeLock } from './take-lock.js';

export interface UpgradeOptions {
  channel?: string;
  bundle?: string;
  allowDowngrade?: boolean;
  reboot?: boolean;
  signal?: AbortSignal;
  onProgress?: (step: string, fraction?: number) => void;
  /** Test hook: called at each named step (the SIGKILL tests stop the process there). */
  onStep?: (step: UpgradeStep) => void;
}

/** Chunk buffers in flight between download and slot: up to three 8 MiB read-back segments, and the chunks being hashed and written. */
const installBufferBytes = 64 << 20;

export type UpgradeStep = 'locked' | 'verified-header' | 'standby-released' | 'writing' | 'written' | 'read-back' | 'env-written';

export type UpgradeResult =
  | { kind: 'up-to-date'; version: string }
  | { kind: 'installed'; version: string; from: string; slot: Slot; sha256: string; rebooting: boolean };

export async function upgrade(config: AgentConfig, options: UpgradeOptions): Promise<UpgradeResult> {
  if ((options.channel === undefined) === (options.bundle === undefined)) {
    throw new KubeosError('E_USAGE', 'give exactly one of --channel URL or --bundle URL-or-FILE');
  }
  const progress = options.onProgress ?? (() => {});
  const step = options.onStep ?? (() => {});
  const lock = await takeLock(config.runDir, `upgrade from ${options.channel ?? options.bundle}`);
  const signal = options.signal ? AbortSignal.any([options.signal, lock.signal]) : lock.signal;
  let version: string | undefined;
  const state = await readState(config.stateDir);
  try {
    step('locked');
    const booted = await readBooted(config.runDir, config.osRelease);
    const standby = otherSlot(booted.slot);
    const { env, vars } = await readBootEnv(config.bootEnv);
    if (env.trying === booted.slot) {
      throw new KubeosError('E_SLOT', `slot ${booted.slot} is on trial and not committed: commit it before the next upgrade`, { hint: 'kubeos agent commit' });
    }
    const trustedKeys = await loadTrustedKeys(config.trustedKeys);

    progress('verifying');
    let source = options.bundle;
    let channelSigned: Awaited<ReturnType<typeof fetchChannel>>['signed'] | undefined;
    if (options.channel !== undefined) {
      const fetched = await fetchChannel(options.channel, { trustedKeys, lastSerial: state.channelSerials[options.channel], signal });
      channelSigned = fetched.signed;
      source = fetched.bundleUrl;
      state.channelSerials[options.channel] = fetched.signed.serial;
      await writeState(config.stateDir, state);
      const upToDate = decideVersion(fetched.signed.version, booted.version, options.allowDowngrade);
      if (upToDate) return { kind: 'up-to-date', version: booted.version };
    }
    // chunk buffers go from the verifier to the slot writer and back: the install's memory bound
    const chunkPool = new ChunkPool(installBufferBytes);
    const bundle = await readBundle(openSource(source as string, { signal, onResume: (offset) => progress(`resuming at byte ${offset}`) }), { trustedKeys, compatible: config.compatible, signal, chunkPool });
    try {
      if (channelSigned !== undefined) checkBundleMatchesChannel(bundle, channelSigned);
      version = bundle.manifest.version;
      if (decideVersion(version, booted.version, options.allowDowngrade)) {
        bundle.payload.destroy();
        return { kind: 'up-to-date', version: booted.version };
      }
      step('verified-header');

      const target = await resolveSlot(standby, config.slots[standby]);
      const active = await resolveSlot(booted.slot, config.slots[booted.slot]);
      if (target.path === active.path && target.offset < active.offset + active.size && active.offset < target.offset + target.size) {
        throw new KubeosError('E_SLOT', `the standby slot ${standby} overlaps the booted slot ${booted.slot}: refusing to write`);
      }
      // From here the standby holds no bootable image: the environment must not point at it.
      const released = planForgetStandby(env, booted.slot);
      if (JSON.stringify(released) !== JSON.stringify(env)) await writeBootEnv(config.bootEnv, released, vars);
      state.slots[booted.slot] ??= { version: booted.version, sha256: '', size: 0, committed: env.good === booted.slot };
      delete state.slots[standby];
      await writeState(config.stateDir, state);
      step('standby-released');

      const { uncompressedSize, uncompressedSha256 } = bundle.manifest.payload;
      // The writer syncs and reads back what it wrote as it goes, and ends once all of it compared equal.
      const writer = await openSlotWriter(target, uncompressedSize, {
        signal,
        release: (buffer) => chunkPool.give(buffer),
        onWritten: () => {
          step('written');
          progress(`reading back slot ${standby}`);
        },
      });
      progress(`writing slot ${standby}`, 0);
      step('writing');
      let done = 0;
      bundle.payload.on('data', (chunk: Buffer) => {
        done += chunk.length;
        progress(`writing slot ${standby}`, done / uncompressedSize);
      });
      await pipeline(bundle.payload, writer.sink, { signal });
      const actual = uncompressedSha256;
      step('read-back');
      state.slots[standby] = { version, sha256: actual, size: uncompressedSize, committed: false };
      await writeState(config.stateDir, state);

      await writeBootEnv(config.bootEnv, planTryStandby(released, booted.slot, config.bootTries), vars);
      step('env-written');
      state.lastUpgrade = { version, slot: standby, result: 'installed', at: new Date().toISOString() };
      await writeState(config.stateDir, state);
      const rebooting = options.reboot !== false;
      if (rebooting) {
        progress('rebooting');
        await runCommand(config.reboot, { timeoutMs: 60_000 });
      }
      return { kind: 'installed', version, from: booted.version, slot: standby, sha256: actual, rebooting };
    } finally {
      bundle.payload.destroy();
    }
  } catch (error) {
    if (version !== undefined) {
      state.lastUpgrade = { version, slot: otherSlot((await readBooted(config.runDir, config.osRelease).catch(() => ({ slot: 'B' as Slot }))).slot), result: 'failed', at: new Date().toISOString(), error: isKubeosError(error) ? error.code : String(error) };
      await writeState(config.stateDir, state).catch(() => {});
    }
    throw error;
  } finally {
    await lock.release().catch(() => {});
  }
}

/** true: nothing to do. Throws E_DOWNGRADE for an older version unless allowed. */
function decideVersion(offered: string, running: string, allowDowngrade: boolean | undefined): boolean {
  const order = compareVersions(offered, running);
  if (order > 0) return false;
  if (order === 0) return !allowDowngrade;
  if (allowDowngrade) return false;
  throw new KubeosError('E_DOWNGRADE', `bundle version ${offered} is older than the running ${running}`, {
    hint: 'pass --allow-downgrade to install it anyway',
    details: { offered, running },
  });
}
