/**
 * `kubeos agent upgrade`: the one path that changes what a host boots. Order matters and is the
 * safety argument:
 *   1. lock; 2. verify the channel index and the bundle manifest before reading a payload byte;
 *   3. make sure the boot environment does not name the standby slot, then stream the verified
 *      payload into the standby slot only; 4. sync and read the slot back against the signed
 *      sha256; 5. only then point the boot environment at it (tries counted by GRUB); 6. reboot.
 * A failure or a kill at any point leaves an environment that boots what booted before.
 */
import type { Readable } from 'node:stream';
import { finished, pipeline } from 'node:stream/promises';
import { otherSlot, type Slot } from '../core/boot-env.js';
import { ChunkPool } from '../core/bundle/chunk-pool.js';
import { readBundle } from '../core/bundle/read-bundle.js';
import { HashTap } from '../core/bundle/hash-tap.js';
import { findRelease, releasesOf, type ChannelRelease } from '../core/channel/channel-index.js';
import { fetchChannel, checkBundleMatchesChannel } from '../core/channel/fetch-channel.js';
import { channelUrlOf, checkChannelName, chunkStoreOf, parseUpdateSource, resolveBundleUrl } from '../core/channel/layout.js';
import { loadTrustedKeys } from '../core/crypto/keys.js';
import { compareVersions } from '../core/compare-versions.js';
import { isKubeosError, KubeosError } from '../core/errors.js';
import { runCommand } from '../core/exec.js';
import type { AgentConfig } from './agent-config.js';
import { readState, writeState } from './agent-state.js';
import { readBootEnv, writeBootEnv } from './boot-env-store.js';
import { openSource } from './fetch-resumable.js';
import { readBundleHead } from './read-bundle-head.js';
import { forgetSlotIndex, loadSlotIndex, saveSlotIndex } from './slot-index-store.js';
import { openSlotWriter, resolveSlot, type ReadBackSource } from './open-slot.js';
import { planForgetStandby, planTryStandby } from './plan-boot-env.js';
import { readBooted } from './read-booted.js';
import { takeLock } from './take-lock.js';
import { chooseDelta } from './choose-delta.js';
import { openDeltaSource } from './delta-source.js';

export interface UpgradeOptions {
  /** A channel name under the config's updateServer (or, the older form, the URL of a channel index). */
  channel?: string;
  /**
   * Install exactly this release of the channel (an OSUpgrade's version): it must be listed in the
   * signed index, which is checked before the standby slot is touched. Default: the current release.
   */
  version?: string;
  bundle?: string;
  allowDowngrade?: boolean;
  reboot?: boolean;
  signal?: AbortSignal;
  onProgress?: (step: string, fraction?: number, bytes?: { done: number; total: number }) => void;
  /** Bytes of the standby slot written so far and in all (for the cluster's progress annotation). */
  onBytes?: (done: number, total: number) => void;
  /**
   * Called with the result once the new slot is set to boot next, before the reboot: a report made
   * after the reboot command races init's SIGTERM and may never reach the console or the log.
   */
  onInstalled?: (result: InstalledResult) => void;
  /** Test hook: called at each named step (the SIGKILL tests stop the process there). */
  onStep?: (step: UpgradeStep) => void;
}

/** Chunk buffers in flight between download and slot: up to three 8 MiB read-back segments, and the chunks being hashed and written. */
const installBufferBytes = 64 << 20;

export type UpgradeStep = 'locked' | 'verified-header' | 'standby-released' | 'writing' | 'written' | 'read-back' | 'env-written';

export interface InstalledResult { kind: 'installed'; version: string; from: string; slot: Slot; sha256: string; rebooting: boolean; transfer: TransferReport; /** Where the read-back read the slot from. */ readBack: ReadBackSource; /** Bytes written with O_DIRECT, past the page cache (the rest went through it). */ directBytes: number }

export type UpgradeResult = { kind: 'up-to-date'; version: string } | InstalledResult;

/** What an install downloaded and what it copied from the booted slot instead. */
export interface TransferReport {
  mode: 'delta' | 'full';
  /** Bytes received: the bundle (its manifest alone for a delta), the chunk index object and the compressed chunks. */
  fetchedBytes: number;
  /** Of those, bytes of the bundle file (a delta reads its manifest, and what was in flight when it stopped). */
  bundleBytes: number;
  /** Image bytes copied from the slots: the booted one, and what an interrupted install left in the standby. */
  reusedBytes: number;
  /** Of fetchedBytes, those of the chunk index object (a bundle whose manifest names one, beside its chunk store). */
  indexBytes?: number;
  fetchedChunks?: number;
  reusedChunks?: number;
  /** Of the reused, what the standby held from an interrupted install. */
  resumedBytes?: number;
  resumedChunks?: number;
  /** Chunks that recur in the image: fetched once, written again from memory. */
  repeatedChunks?: number;
  /** zstd processes that decoded the fetched chunks (in batches). */
  decoders?: number;
  /** Where the booted slot's chunk index came from: saved when its image was installed, or read from the slot. */
  seedIndex?: 'saved' | 'read';
  /** Booted-slot chunks that did not match when read (a damaged seed) and were fetched instead. */
  seedMismatches?: number;
  /** Requests to the chunk store: the chunks, and the index object's. */
  requests?: number;
  /** Of the fetched chunks, those read from the release's pack by Range requests (runs of them). */
  packedChunks?: number;
  /** Why the pack was not used (none in the store, a map that does not parse), or a run of it failed and its chunks were fetched one by one. */
  packProblem?: string;
  /** Why a full install did not try a delta. */
  reason?: string;
  /** A delta that failed, and so took the full bundle. */
  fallback?: { code: string; message: string };
}

export async function upgrade(config: AgentConfig, options: UpgradeOptions): Promise<UpgradeResult> {
  if ((options.channel === undefined) === (options.bundle === undefined)) {
    throw new KubeosError('E_USAGE', 'give exactly one of --channel NAME or --bundle URL-or-FILE');
  }
  const progress = options.onProgress ?? (() => {});
  const step = options.onStep ?? (() => {});
  const lock = await takeLock(config.runDir, `upgrade from ${options.channel ?? options.bundle}`);
  const signal = options.signal ? AbortSignal.any([options.signal, lock.signal]) : lock.signal;
  let version: string | undefined;
  // what broke the download, if it broke: it, not what the half-read stream did to the readers after it, is the reason
  let sourceFailure: unknown;
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
    let release: ChannelRelease | undefined;
    if (options.channel !== undefined) {
      const { url, name } = resolveChannel(config, options.channel);
      // serials are kept per channel name (however its URL is spelled); older state kept them per URL
      const lastSerial = Math.max(state.channelSerials[name] ?? 0, state.channelSerials[url] ?? 0) || undefined;
      const fetched = await fetchChannel(url, { trustedKeys, lastSerial, signal, channel: name, timeoutMs: config.networkTimeoutSeconds * 1000 });
      channelSigned = fetched.signed;
      state.channelSerials[name] = fetched.signed.serial;
      await writeState(config.stateDir, state);
      // the version is decided from the signed index before a byte of any bundle is read
      release = options.version === undefined ? releasesOf(fetched.signed)[0]! : findRelease(fetched.signed, options.version);
      source = resolveBundleUrl(url, release.bundle.path);
      const upToDate = decideVersion(release.version, booted.version, options.allowDowngrade);
      if (upToDate) return { kind: 'up-to-date', version: booted.version };
    } else if (options.version !== undefined) {
      throw new KubeosError('E_USAGE', 'a version to pin needs a channel that lists it (--channel NAME)');
    }
    // chunk buffers go from the verifier to the slot writer and back: the install's memory bound
    const chunkPool = new ChunkPool(installBufferBytes);
    // the bundle's bytes are counted and hashed on the way in: the index's size and sha256 bind them too
    const expectedSize = release?.bundle.size;
    const openFull = async () => {
      sourceFailure = undefined;
      const tap = new HashTap((bytes) => {
        // more than the signed size is never read: a server that keeps sending is cut off
        if (expectedSize !== undefined && bytes > expectedSize) {
          const tooLong = new KubeosError('E_BUNDLE_INVALID', `bundle ${source} is longer than the ${expectedSize} bytes the signed channel index gives`, { details: { expected: expectedSize } });
          sourceFailure ??= tooLong;
          tap.destroy(tooLong);
        }
      }, release !== undefined);
      const download = openSource(source as string, { signal, idleMs: config.networkTimeoutSeconds * 1000, minBytesPerSecond: config.minDownloadBytesPerSecond, onResume: (offset) => progress(`resuming at byte ${offset}`) });
      download.once('error', (error) => {
        sourceFailure ??= error;
        tap.destroy(error);
      });
      tap.once('close', () => download.destroy());
      return { tap, bundle: await readBundle(download.pipe(tap), { trustedKeys, compatible: config.compatible, signal, chunkPool, startNow: true }) };
    };
    // a bundle beside a chunk store may go by delta: read only its header first (Range requests)
    const head = chunkStoreOf(source as string) === undefined ? undefined : await readBundleHead(source as string, { trustedKeys, compatible: config.compatible, signal, idleMs: config.networkTimeoutSeconds * 1000 });
    let full = head === undefined ? await openFull() : undefined;
    let bundle = head?.bundle ?? full!.bundle;
    /** The full read of a bundle whose header was read apart: it must carry the same manifest. */
    const reopenFull = async () => {
      const manifest = bundle.manifest;
      bundle.payload.destroy();
      full = await openFull();
      bundle = full.bundle;
      if (bundle.manifest.payload.uncompressedSha256 !== manifest.payload.uncompressedSha256 || bundle.manifest.version !== manifest.version) {
        throw new KubeosError('E_BUNDLE_INVALID', `bundle ${source} changed between two reads (another manifest)`, { hint: 'the server replaced the file under its content address: republish it' });
      }
      return full;
    };
    try {
      if (channelSigned !== undefined) checkBundleMatchesChannel(bundle, channelSigned, release?.version);
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
      // The seed is the booted slot (checked apart from the standby just above), never the slot being written.
      // an install into the standby that did not end may have left chunks of this image there
      const resume = state.interrupted?.slot === standby && state.slots[standby] === undefined ? { target, bytes: Math.min(state.interrupted.size, target.size) } : undefined;
      const rule = (bundle.manifest.payload.index ?? bundle.manifest.payload.indexObject)?.rule;
      const saved = rule === undefined ? undefined : await loadSlotIndex(config.stateDir, booted.slot, state.slots[booted.slot]?.sha256 ?? '', rule);
      const delta = await chooseDelta(bundle.manifest, source as string, { target: active, bytes: state.slots[booted.slot]?.size, saved }, resume, { signal, idleMs: config.networkTimeoutSeconds * 1000 });
      const headerBytes = head?.bytes ?? full!.tap.bytes;
      // the index object, when one was fetched (whether the delta then went ahead or not)
      const indexBytes = delta.indexFetch?.bytes ?? 0;
      const indexReport = delta.indexFetch === undefined ? {} : { indexBytes };
      if ('plan' in delta) {
        // only the manifest was needed: the rest of the bundle is not downloaded
        bundle.payload.destroy();
        const { reusedChunks, reusedBytes, resumedChunks, resumedBytes, fetchChunks, fetchBytes } = delta.plan;
        const resumed = resumedChunks > 0 ? ` (${resumedChunks} chunks, ${resumedBytes} bytes, left in slot ${standby} by an interrupted install)` : '';
        progress(`delta: ${reusedChunks} chunks (${reusedBytes} bytes) from the slots${resumed}, ${fetchChunks} (${fetchBytes} bytes) to fetch`);
      } else {
        progress(`full bundle: ${delta.reason}`);
        if (full === undefined) await reopenFull();
      }
      // From here the standby holds no bootable image: the environment must not point at it.
      const released = planForgetStandby(env, booted.slot);
      if (JSON.stringify(released) !== JSON.stringify(env)) await writeBootEnv(config.bootEnv, released, vars);
      state.slots[booted.slot] ??= { version: booted.version, sha256: '', size: 0, committed: env.good === booted.slot };
      delete state.slots[standby];
      state.interrupted = { slot: standby, version, size: bundle.manifest.payload.uncompressedSize };
      await writeState(config.stateDir, state);
      await forgetSlotIndex(config.stateDir, standby);
      step('standby-released');

      const { uncompressedSize, uncompressedSha256 } = bundle.manifest.payload;
      // The writer syncs and reads back what it wrote as it goes, and ends once all of it compared equal.
      let readBack: ReadBackSource = 'page-cache';
      let directBytes = 0;
      const writeSlot = async (image: Readable, pooled: boolean) => {
        const writer = await openSlotWriter(target, uncompressedSize, {
          signal,
          release: pooled ? (buffer) => chunkPool.give(buffer) : undefined,
          direct: pooled ? (buffer) => chunkPool.aligned(buffer) : undefined,
          onWritten: () => {
            step('written');
            progress(`reading back slot ${standby}`);
          },
        });
        progress(`writing slot ${standby}`, 0);
        step('writing');
        let done = 0;
        image.on('data', (chunk: Buffer) => {
          done += chunk.length;
          progress(`writing slot ${standby}`, done / uncompressedSize, { done, total: uncompressedSize });
          options.onBytes?.(done, uncompressedSize);
        });
        await pipeline(image, writer.sink, { signal });
        readBack = writer.readBack();
        directBytes = writer.writtenDirect();
      };
      const checkTap = async (tap: HashTap) => {
        if (release === undefined) return;
        await finished(tap);
        if (tap.bytes !== release.bundle.size || tap.digest() !== release.bundle.sha256) {
          throw new KubeosError('E_BUNDLE_INVALID', `bundle ${source} is ${tap.bytes} bytes with sha256 ${tap.digest()}; the signed channel index says ${release.bundle.size} bytes, sha256 ${release.bundle.sha256}`, {
            hint: 'the server holds another file under that name: republish it; nothing was made bootable',
            details: { expected: release.bundle, actual: { size: tap.bytes, sha256: tap.digest() } },
          });
        }
      };
      const writeFull = async (opened: NonNullable<typeof full>) => {
        await writeSlot(opened.bundle.payload, true);
        await checkTap(opened.tap);
      };
      let transfer: TransferReport;
      if ('plan' in delta) {
        const opened = openDeltaSource({ seeds: { booted: active, standby: resume?.target }, plan: delta.plan, store: delta.store, uncompressedSha256, signal, idleMs: config.networkTimeoutSeconds * 1000 });
        try {
          await writeSlot(opened.stream, false);
          const stats = opened.stats();
          transfer = {
            mode: 'delta', fetchedBytes: headerBytes + indexBytes + stats.fetchedBytes, bundleBytes: headerBytes, reusedBytes: stats.reusedBytes, ...indexReport, fetchedChunks: stats.fetchedChunks, reusedChunks: stats.reusedChunks,
            resumedBytes: stats.resumedBytes, resumedChunks: stats.resumedChunks, repeatedChunks: stats.repeatedChunks, seedMismatches: stats.seedMismatches, requests: stats.requests + (delta.indexFetch?.requests ?? 0), decoders: stats.decoders,
            seedIndex: delta.savedIndex ? 'saved' : 'read', packedChunks: stats.packedChunks, ...(stats.packProblem === undefined ? {} : { packProblem: stats.packProblem }),
          };
        } catch (error) {
          opened.stream.destroy();
          // a problem of the seed or the chunk store (E_DELTA, E_FETCH): the full bundle, checked as
          // ever, instead. Anything else (the standby failing a write or its read-back) fails the
          // upgrade as a full install would: a failing disk is not written a second time.
          const code = isKubeosError(error) ? error.code : undefined;
          if (signal.aborted || (code !== 'E_DELTA' && code !== 'E_FETCH')) throw error;
          progress(`delta install failed (${code}: ${(error as Error).message}); taking the full bundle`);
          const stats = opened.stats();
          const reopened = await reopenFull();
          await writeFull(reopened);
          transfer = { mode: 'full', fetchedBytes: headerBytes + indexBytes + stats.fetchedBytes + reopened.tap.bytes, bundleBytes: headerBytes + reopened.tap.bytes, reusedBytes: 0, ...indexReport, fallback: { code, message: (error as Error).message } };
        }
      } else {
        const opened = full!;
        await writeFull(opened);
        // a header read apart (by range) was received twice
        const bytes = opened.tap.bytes + (head?.bytes ?? 0);
        transfer = { mode: 'full', fetchedBytes: bytes + indexBytes, bundleBytes: bytes, reusedBytes: 0, ...indexReport, reason: delta.reason };
      }
      const actual = uncompressedSha256;
      step('read-back');
      // the signed index now describes the standby: the next delta from it need not read it. An
      // index object not fetched (no chunk store beside the bundle, or it failed) is not saved:
      // that slot is read when it seeds a delta, as on a host the agent never updated
      if (delta.index !== undefined) await saveSlotIndex(config.stateDir, standby, actual, delta.index);
      state.slots[standby] = { version, sha256: actual, size: uncompressedSize, committed: false };
      delete state.interrupted;
      await writeState(config.stateDir, state);

      // the kernel arguments committed with `agent config` carry over to the new slot; a pending
      // trial of new ones does not (GRUB tries them only on a good boot)
      const carried = { ...vars, [`kubeos_args_${standby}`]: vars[`kubeos_args_${booted.slot}`] ?? '' };
      await writeBootEnv(config.bootEnv, planTryStandby(released, booted.slot, config.bootTries), carried);
      step('env-written');
      state.lastUpgrade = { version, slot: standby, result: 'installed', at: new Date().toISOString() };
      await writeState(config.stateDir, state);
      const rebooting = options.reboot !== false;
      const result: InstalledResult = { kind: 'installed', version, from: booted.version, slot: standby, sha256: actual, rebooting, transfer, readBack, directBytes };
      options.onInstalled?.(result);
      if (rebooting) {
        progress('rebooting');
        await runCommand(config.reboot, { timeoutMs: 60_000 });
      }
      return result;
    } finally {
      bundle.payload.destroy();
    }
  } catch (error) {
    if (version !== undefined) {
      state.lastUpgrade = { version, slot: otherSlot((await readBooted(config.runDir, config.osRelease).catch(() => ({ slot: 'B' as Slot }))).slot), result: 'failed', at: new Date().toISOString(), error: isKubeosError(error) ? error.code : String(error) };
      await writeState(config.stateDir, state).catch(() => {});
    }
    throw isKubeosError(sourceFailure) ? sourceFailure : error;
  } finally {
    await lock.release().catch(() => {});
  }
}

/**
 * The index URL for a channel: a name is looked up under the host's own image server; the URL of
 * an index (the older form, for a person at the host) is taken as it is.
 */
export function resolveChannel(config: AgentConfig, channel: string): { url: string; name: string } {
  if (/^https?:\/\//.test(channel)) {
    const parsed = parseUpdateSource('--channel', channel, undefined);
    return { url: channel, name: parsed.channel! };
  }
  checkChannelName(channel);
  if (config.updateServer === undefined) {
    throw new KubeosError('E_USAGE', `channel ${channel}: this host has no image server (updateServer in its agent config)`, {
      hint: 'build the image with kubeos build --update-server URL (or pass --channel with the full URL of an index)',
    });
  }
  return { url: channelUrlOf(config.updateServer, channel), name: channel };
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
