/**
 * Slot access: resolve a slot to a device (by GPT partition name, via the PARTNAME the kernel puts
 * in each partition's uevent) or a byte range of a file, write an image into it, read it back.
 */
import { createHash } from 'node:crypto';
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

/** sha256 of the first `bytes` of the slot, read back from the device. */
export async function hashSlot(target: SlotTarget, bytes: number, signal?: AbortSignal): Promise<string> {
  const handle = await open(target.path, 'r');
  try {
    const hash = createHash('sha256');
    const buffer = Buffer.alloc(4 << 20);
    for (let pos = 0; pos < bytes; ) {
      signal?.throwIfAborted();
      const { bytesRead } = await handle.read(buffer, 0, Math.min(buffer.length, bytes - pos), target.offset + pos);
      if (bytesRead === 0) throw new KubeosError('E_SLOT', `slot ${target.slot} ended after ${pos} of ${bytes} bytes`);
      hash.update(buffer.subarray(0, bytesRead));
      pos += bytesRead;
    }
    return hash.digest('hex');
  } finally {
    await handle.close();
  }
}
