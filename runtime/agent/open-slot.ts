/**
 * Slot access: resolve a slot to a device (by GPT partition name, via the PARTNAME the kernel puts
 * in each partition's uevent) or a byte range of a file, write an image into it, read it back.
 */
import { constants } from 'node:fs';
import { open, readFile, readdir, stat, type FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import type { Slot } from '../core/boot-env.js';
import { KubeosError } from '../core/errors.js';
import type { SlotLocation } from './agent-config.js';
import { directAlignment } from '../core/bundle/chunk-pool.js';

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
  /** Bytes per read of the read-back (a multiple of 4 KiB; tests make it small to read a segment in several). */
  readBackBytes?: number;
  /** Receives each written buffer once it was read back: the writer is done with it. */
  release?: (buffer: Buffer) => void;
  /**
   * True for buffers at a 4 KiB-aligned address (ChunkPool.aligned): those of whole 4 KiB blocks
   * at aligned slot offsets are written with O_DIRECT, past the page cache. Without it, or where
   * the file system refuses O_DIRECT, every write goes through the cache.
   */
  direct?: (buffer: Buffer) => boolean;
}

const defaultSegmentBytes = 8 << 20;
/**
 * The read-back reads a segment in one call: 1 MiB reads took a 1 GiB install 2.85 s against
 * 2.53 s, and 3.92 s of CPU against 3.70 s (medians of three alternating; peak RSS 7 MiB more).
 */
const defaultReadBackBytes = 8 << 20;

/**
 * A sink for the verified image that writes it sequentially into the slot (a batch of pieces per
 * write call) and refuses to run past its end. Every `segmentBytes` it syncs what it wrote, reads
 * that part of the slot back and compares it byte for byte with the verified data it wrote, while
 * the rest still streams in: the write-back to the medium and the read-back overlap decompression
 * instead of following it. `final` syncs and reads back the rest; the sink finishes only when
 * every byte is written, synced and read back.
 *
 * Whole 4 KiB blocks from aligned memory (the chunk pool's) are written with O_DIRECT: they go
 * from the buffer to the device without a copy into the page cache, which costs a core for about
 * half a second per GiB and would push the host's working set out of the cache; the rest (the
 * image's last partial block, a delta's buffers) goes through the cache. Durability is the same
 * either way: the device's cache is flushed by the sync before each read-back.
 *
 * Comparing with the written data is as strong as hashing the read-back: every written byte was
 * released by the chunk verifier, whose signed chunk hashes cover the whole image, so a slot that
 * reads back equal holds the image with the signed sha256. It costs a memcmp where a second
 * sha256 pass would cost a core for most of a second per GiB.
 *
 * The read-back reads the medium, not the page cache (which would hand back what was written
 * whatever the device kept): the slot is opened a second time with O_DIRECT and read in whole,
 * aligned 4 KiB blocks. Where the file system refuses O_DIRECT (tmpfs), it reads through the cache
 * and `readBack()` says so.
 */
export type ReadBackSource = 'medium' | 'page-cache';

export interface SlotWriter {
  sink: Writable;
  /** Bytes written so far. */
  written: () => number;
  /** Of those, the bytes written with O_DIRECT. */
  writtenDirect: () => number;
  readBack: () => ReadBackSource;
}

export async function openSlotWriter(target: SlotTarget, expectedBytes: number, options: SlotWriterOptions = {}): Promise<SlotWriter> {
  if (expectedBytes > target.size) {
    throw new KubeosError('E_SLOT', `the image is ${expectedBytes} bytes but slot ${target.slot} holds ${target.size}`, { details: { expectedBytes, slotSize: target.size } });
  }
  const segmentBytes = options.segmentBytes ?? defaultSegmentBytes;
  const handle = await open(target.path, 'r+');
  // only a refused O_DIRECT means "read through the cache"; any other failure to open is a failure
  const direct = await open(target.path, constants.O_RDWR | constants.O_DIRECT).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'EINVAL' || error.code === 'EOPNOTSUPP') return undefined;
    return handle.close().then(() => {
      throw new KubeosError('E_SLOT', `slot ${target.slot} (${target.path}) cannot be opened for its read-back: ${error.code ?? String(error)}`, { cause: error });
    });
  });
  const readBackBytes = Math.ceil((options.readBackBytes ?? defaultReadBackBytes) / directAlignment) * directAlignment;
  const readBack = new ReadBack(handle, direct, target, readBackBytes, options.signal, options.release);
  let position = 0;
  let directBytes = 0;
  /** Cleared when a direct write is refused (EINVAL): the rest goes through the cache. */
  let writeDirect = direct !== undefined && options.direct !== undefined;
  const eligible = (buffer: Buffer, at: number): boolean =>
    writeDirect && buffer.length % directAlignment === 0 && (target.offset + at) % directAlignment === 0 && options.direct!(buffer);
  /** Writes `buffers` at `at` with O_DIRECT when all of them allow it, through the cache otherwise. */
  const writeRun = async (buffers: Buffer[], length: number, at: number, viaDirect: boolean): Promise<void> => {
    let bytesWritten: number;
    if (viaDirect) {
      try {
        ({ bytesWritten } = await direct!.writev(buffers, target.offset + at));
        directBytes += bytesWritten;
      } catch (error) {
        // refused as a whole, nothing written: this file system or device wants other alignments
        if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
        writeDirect = false;
        ({ bytesWritten } = await handle.writev(buffers, target.offset + at));
      }
    } else {
      ({ bytesWritten } = await handle.writev(buffers, target.offset + at));
    }
    if (bytesWritten !== length) throw new KubeosError('E_SLOT', `short write to slot ${target.slot}: ${bytesWritten} of ${length} bytes at ${at}`);
  };
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
    // consecutive buffers that may all go direct (or all may not) make one write call each
    let at = position;
    let run: Buffer[] = [];
    let runBytes = 0;
    let runDirect = false;
    for (const buffer of buffers) {
      const viaDirect = eligible(buffer, at);
      if (run.length > 0 && viaDirect !== runDirect) {
        await writeRun(run, runBytes, at - runBytes, runDirect);
        run = [];
        runBytes = 0;
      }
      runDirect = viaDirect;
      run.push(buffer);
      runBytes += buffer.length;
      at += buffer.length;
    }
    if (run.length > 0) await writeRun(run, runBytes, at - runBytes, runDirect);
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
      queueSegment().then(() => readBack.drain()).then(() => readBack.close()).then(() => handle.close()).then(() => callback(), callback);
    },
    destroy(error, callback) {
      readBack.drain().catch(() => {}).finally(() => {
        readBack.close().then(() => handle.close()).then(() => callback(error), () => callback(error));
      });
    },
  });
  return { sink, written: () => position, writtenDirect: () => directBytes, readBack: () => readBack.source() };
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
  private buffer: Buffer;
  /** Set once an O_DIRECT read landed in `buffer` (Node cannot ask for aligned memory: found by trying). */
  private aligned = false;

  constructor(
    private readonly handle: FileHandle,
    private direct: FileHandle | undefined,
    private readonly target: SlotTarget,
    private readonly readBackBytes: number,
    private readonly signal: AbortSignal | undefined,
    private readonly release: ((buffer: Buffer) => void) | undefined,
  ) {
    this.fromMedium = direct !== undefined;
    // the medium's reads land in aligned memory found on the first read; this is for the cache's
    this.buffer = Buffer.alloc(0);
  }

  /** Where the reads went; closing after the last one does not change it. */
  private fromMedium: boolean;

  source(): ReadBackSource {
    return this.fromMedium ? 'medium' : 'page-cache';
  }

  async close(): Promise<void> {
    await this.direct?.close();
    this.direct = undefined;
  }

  /**
   * Reads bytes from `position` of the slot (at most up to `end`) into `buffer`, from the medium
   * when it can: they sit at buffer[from, from + count).
   */
  private async readAt(position: number, end: number): Promise<{ from: number; count: number }> {
    const { direct, readBackBytes } = this;
    if (direct !== undefined && this.fromMedium) {
      // O_DIRECT wants memory, offset and length aligned: whole 4 KiB blocks around the range
      const lead = (this.target.offset + position) % directAlignment;
      const length = Math.min(readBackBytes - lead, end - position);
      const span = Math.ceil((lead + length) / directAlignment) * directAlignment;
      const at = this.target.offset + position - lead;
      const got = (bytesRead: number) => ({ from: lead, count: Math.max(0, Math.min(length, bytesRead - lead)) });
      if (this.aligned) return got((await direct.read(this.buffer, 0, span, at)).bytesRead);
      const spare = Buffer.allocUnsafeSlow(readBackBytes + directAlignment);
      for (let shift = 0; shift < directAlignment; shift += 16) {
        const view = spare.subarray(shift, shift + readBackBytes);
        try {
          const { bytesRead } = await direct.read(view, 0, span, at);
          this.buffer = view;
          this.aligned = true;
          return got(bytesRead);
        } catch (error) {
          if ((error as NodeJS.ErrnoException).code !== 'EINVAL') throw error;
        }
      }
      // no alignment works here: the cache it is, and source() says so (the writer may still
      // hold the descriptor: close() shuts it)
      this.fromMedium = false;
    }
    if (this.buffer.length < readBackBytes) this.buffer = Buffer.allocUnsafe(readBackBytes);
    const length = Math.min(readBackBytes, end - position);
    return { from: 0, count: (await this.handle.read(this.buffer, 0, length, this.target.offset + position)).bytesRead };
  }

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
    const { target } = this;
    const end = start + pieces.reduce((sum, piece) => sum + piece.length, 0);
    let at = start;
    let filled = 0;
    let read = 0;
    for (const piece of pieces) {
      for (let offset = 0; offset < piece.length; ) {
        if (read === filled) {
          this.signal?.throwIfAborted();
          const { from, count } = await this.readAt(at, end);
          if (count === 0) throw new KubeosError('E_SLOT', `slot ${target.slot} ended at byte ${at} while reading it back`);
          read = from;
          filled = from + count;
        }
        const take = Math.min(piece.length - offset, filled - read);
        const buffer = this.buffer;
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
