/**
 * Slot access: resolve a slot to a device (by GPT partition name, via the PARTNAME the kernel puts
 * in each partition's uevent) or a byte range of a file, write an image into it, read it back.
 */
import { webcrypto } from 'node:crypto';
import { open, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Slot } from '../core/boot-env.js';
import { KubeosError } from '../core/errors.js';
import type { SlotLocation } from './agent-config.js';

export interface SlotTarget {
  slot: Slot;
  path: string;
  offset: number;
  size: number;
}

async function findPartition(name: string): Promise<{ path: string; size: number }> {
  const base = '/sys/class/block';
  for (const dev of (await readdir(base).catch(() => [] as string[])).sort()) {
    const uevent = await readFile(join(base, dev, 'uevent'), 'utf8').catch(() => '');
    if (uevent.split('\n').includes(`PARTNAME=${name}`)) {
      const sectors = Number((await readFile(join(base, dev, 'size'), 'utf8')).trim());
      return { path: `/dev/${dev}`, size: sectors * 512 };
    }
  }
  throw new KubeosError('E_SLOT', `no partition named ${name} on this host`, { hint: 'check the slots in the agent config' });
}

export async function resolveSlot(slot: Slot, location: SlotLocation): Promise<SlotTarget> {
  if ('partition' in location) return { slot, offset: 0, ...(await findPartition(location.partition)) };
  const size = location.size ?? (await stat(location.path)).size - (location.offset ?? 0);
  return { slot, path: location.path, offset: location.offset ?? 0, size };
}

/** A sink that writes sequentially into the slot and refuses to run past its end. */
export async function openSlotWriter(target: SlotTarget, expectedBytes: number): Promise<{ sink: Writable; written: () => number }> {
  if (expectedBytes > target.size) {
    throw new KubeosError('E_SLOT', `the image is ${expectedBytes} bytes but slot ${target.slot} holds ${target.size}`, { details: { expectedBytes, slotSize: target.size } });
  }
  const handle = await open(target.path, 'r+');
  let position = 0;
  const sink = new Writable({
    highWaterMark: 4 << 20,
    write(chunk: Buffer, _encoding, callback) {
      if (position + chunk.length > expectedBytes) {
        callback(new KubeosError('E_SLOT', `more than the announced ${expectedBytes} bytes arrived for slot ${target.slot}`));
        return;
      }
      handle.write(chunk, 0, chunk.length, target.offset + position).then(() => {
        position += chunk.length;
        callback();
      }, callback);
    },
    final(callback) {
      handle.datasync().then(() => handle.close()).then(() => callback(), callback);
    },
    destroy(error, callback) {
      handle.close().then(() => callback(error), () => callback(error));
    },
  });
  return { sink, written: () => position };
}

/**
 * Reads the slot back and checks every chunk against the signed manifest's chunk hashes (which
 * cover every byte, so this equals checking the whole image's sha256). WebCrypto copies a chunk
 * when asked to digest it and hashes it off the main thread, so the next read proceeds at once:
 * two digests in flight use both cores, and memory stays at a few chunks whatever the image size.
 */
export async function verifySlot(target: SlotTarget, payload: { uncompressedSize: number; chunkSize: number; chunks: readonly string[] }, signal?: AbortSignal): Promise<void> {
  const handle = await open(target.path, 'r');
  const buffer = Buffer.alloc(payload.chunkSize);
  const count = Math.ceil(payload.uncompressedSize / payload.chunkSize);
  const inFlight = new Set<Promise<void>>();
  let failure: unknown;
  try {
    for (let index = 0; index < count && failure === undefined; index++) {
      signal?.throwIfAborted();
      const start = index * payload.chunkSize;
      const length = Math.min(payload.chunkSize, payload.uncompressedSize - start);
      const { bytesRead } = await handle.read(buffer, 0, length, target.offset + start);
      if (bytesRead !== length) throw new KubeosError('E_SLOT', `slot ${target.slot} ended after ${start + bytesRead} of ${payload.uncompressedSize} bytes`);
      const check = webcrypto.subtle.digest('SHA-256', buffer.subarray(0, length)).then((digest) => {
        const actual = Buffer.from(digest).toString('hex');
        if (actual !== payload.chunks[index]) {
          failure ??= new KubeosError('E_HASH_MISMATCH', `slot ${target.slot} reads back wrong at chunk ${index} (offset ${start})`, { details: { index, expected: payload.chunks[index], actual } });
        }
      });
      inFlight.add(check);
      void check.finally(() => inFlight.delete(check));
      if (inFlight.size >= 2) await Promise.race(inFlight);
    }
    await Promise.all(inFlight);
    if (failure !== undefined) throw failure;
  } finally {
    await handle.close();
  }
}
