/**
 * Slot access: resolve a slot to a device (by GPT partition name, via the PARTNAME the kernel puts
 * in each partition's uevent) or a byte range of a file, write an image into it, read it back.
 */
import { open, readFile, readdir, stat, type FileHandle } from 'node:fs/promises';
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

export interface SlotWriterOptions {
  signal?: AbortSignal | undefined;
  /** Bytes between the syncs (and read-backs) made while the image still streams in. */
  segmentBytes?: number;
  /** Called once every byte is written, before the last sync and read-back. */
  onWritten?: () => void;
  /** Receives each written buffer once it was read back: the writer is done with it. */
  release?: (buffer: Buffer) => void;
}

const defaultSegmentBytes = 8 << 20;
const readBackBytes = 1 << 20;

/**
 * A sink for the verified image that writes it sequentially into the slot (a batch of pieces per
 * write call) and refuses to run past its end. Every `segmentBytes` it syncs what it wrote, reads
 * that part of the slot back and compares it byte for byte with the verified data it wrote, while
 * the rest still streams in: the write-back to the medium and the read-back overlap decompression
 * instead of following it. `final` syncs and reads back the rest; the sink finishes only when
 * every byte is written, synced and read back.
 *
 * Comparing with the written data is as strong as hashing the read-back: every written byte was
 * released by the chunk verifier, whose signed chunk hashes cover the whole image, so a slot that
 * reads back equal holds the image with the signed sha256. It costs a memcmp where a second
 * sha256 pass would cost a core for most of a second per GiB.
 */
export async function openSlotWriter(target: SlotTarget, expectedBytes: number, options: SlotWriterOptions = {}): Promise<{ sink: Writable; written: () => number }> {
  if (expectedBytes > target.size) {
    throw new KubeosError('E_SLOT', `the image is ${expectedBytes} bytes but slot ${target.slot} holds ${target.size}`, { details: { expectedBytes, slotSize: target.size } });
  }
  const segmentBytes = options.segmentBytes ?? defaultSegmentBytes;
  const handle = await open(target.path, 'r+');
  const readBack = new ReadBack(handle, target, options.signal, options.release);
  let position = 0;
  /** Written since the last read-back was queued, kept until it is compared. */
  let segment: Buffer[] = [];
  let segmentStart = 0;
  const queueSegment = (): Promise<void> => {
    const pieces = segment;
    const start = segmentStart;
    segment = [];
    segmentStart = position;
    return readBack.queue(start, pieces);
  };
  const writeAll = async (buffers: Buffer[]): Promise<void> => {
    const length = buffers.reduce((sum, buffer) => sum + buffer.length, 0);
    if (position + length > expectedBytes) {
      throw new KubeosError('E_SLOT', `more than the announced ${expectedBytes} bytes arrived for slot ${target.slot}`);
    }
    const { bytesWritten } = await handle.writev(buffers, target.offset + position);
    if (bytesWritten !== length) throw new KubeosError('E_SLOT', `short write to slot ${target.slot}: ${bytesWritten} of ${length} bytes at ${position}`);
    position += length;
    segment.push(...buffers);
    if (position - segmentStart >= segmentBytes) await queueSegment();
  };
  const sink = new Writable({
    highWaterMark: 4 << 20,
    writev(chunks, callback) {
      writeAll(chunks.map((entry) => entry.chunk as Buffer)).then(() => callback(), callback);
    },
    write(chunk: Buffer, _encoding, callback) {
      writeAll([chunk]).then(() => callback(), callback);
    },
    final(callback) {
      if (position !== expectedBytes) {
        callback(new KubeosError('E_SLOT', `only ${position} of ${expectedBytes} bytes arrived for slot ${target.slot}`));
        return;
      }
      options.onWritten?.();
      queueSegment().then(() => readBack.drain()).then(() => handle.close()).then(() => callback(), callback);
    },
    destroy(error, callback) {
      readBack.drain().catch(() => {}).finally(() => {
        handle.close().then(() => callback(error), () => callback(error));
      });
    },
  });
  return { sink, written: () => position };
}

/**
 * Syncs the slot and reads a written range back, comparing it with the pieces that were written
 * there. Ranges are checked in order, one at a time; `queue` resolves once at most one range waits
 * behind the one being checked, which bounds the memory held to about three segments.
 */
class ReadBack {
  private tail: Promise<void> = Promise.resolve();
  private waiting = 0;
  private failure: unknown;
  private readonly buffer = Buffer.allocUnsafe(readBackBytes);

  constructor(
    private readonly handle: FileHandle,
    private readonly target: SlotTarget,
    private readonly signal: AbortSignal | undefined,
    private readonly release: ((buffer: Buffer) => void) | undefined,
  ) {}

  async queue(start: number, pieces: Buffer[]): Promise<void> {
    if (this.failure !== undefined) throw this.failure;
    this.waiting += 1;
    const run = this.tail.then(() => this.check(start, pieces));
    this.tail = run.then(() => {
      this.waiting -= 1;
    }, (error: unknown) => {
      this.waiting -= 1;
      this.failure ??= error;
    });
    while (this.waiting > 1 && this.failure === undefined) await this.tail;
    if (this.failure !== undefined) throw this.failure;
  }

  /** Waits for every queued range; throws the first failure. */
  async drain(): Promise<void> {
    await this.tail;
    if (this.failure !== undefined) throw this.failure;
  }

  private async check(start: number, pieces: Buffer[]): Promise<void> {
    await this.handle.datasync();
    const { buffer, target } = this;
    const end = start + pieces.reduce((sum, piece) => sum + piece.length, 0);
    let at = start;
    let filled = 0;
    let read = 0;
    for (const piece of pieces) {
      for (let offset = 0; offset < piece.length; ) {
        if (read === filled) {
          this.signal?.throwIfAborted();
          const { bytesRead } = await this.handle.read(buffer, 0, Math.min(buffer.length, end - at), target.offset + at);
          if (bytesRead === 0) throw new KubeosError('E_SLOT', `slot ${target.slot} ended at byte ${at} while reading it back`);
          filled = bytesRead;
          read = 0;
        }
        const take = Math.min(piece.length - offset, filled - read);
        if (!piece.subarray(offset, offset + take).equals(buffer.subarray(read, read + take))) {
          let first = 0;
          while (piece[offset + first] === buffer[read + first]) first += 1;
          throw new KubeosError('E_HASH_MISMATCH', `slot ${target.slot} reads back different from what was written, at byte ${at + first}`, { details: { check: 'read-back', offset: at + first } });
        }
        offset += take;
        read += take;
        at += take;
      }
      this.release?.(piece);
    }
  }
}
