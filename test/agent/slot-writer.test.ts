/** The slot writer: writes where the slot is, reads back what it wrote, refuses too much or too little. */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, writeSync } from 'node:fs';
import { readFile, truncate, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { execa } from 'execa';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { openSlotWriter, type SlotTarget } from '../../runtime/agent/open-slot.js';
import { ChunkPool } from '../../runtime/core/bundle/chunk-pool.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const MiB = 1 << 20;

async function fileSlot(t: Parameters<typeof makeTempDir>[0], size: number, offset = 0): Promise<SlotTarget> {
  const path = join(await makeTempDir(t, 'kubeos-slot-'), 'disk.img');
  await writeFile(path, '');
  await truncate(path, offset + size + MiB);
  return { slot: 'B', path, offset, size };
}

/** The image in uneven pieces, as a decompressor hands them over. */
function pieces(image: Buffer): Readable {
  const parts: Buffer[] = [];
  for (let at = 0, step = 1; at < image.length; at += step, step = (step * 7 + 65_537) % 300_000 + 1) parts.push(image.subarray(at, at + step));
  return Readable.from(parts);
}

test('the image lands at the slot offset, byte for byte, across several read-back segments', async (t) => {
  const target = await fileSlot(t, 16 * MiB, 3 * MiB);
  const image = randomBytes(10 * MiB + 12_345);
  const writer = await openSlotWriter(target, image.length, { segmentBytes: 2 * MiB });
  await pipeline(pieces(image), writer.sink);
  t.is(writer.written(), image.length);
  const disk = await readFile(target.path);
  t.true(disk.subarray(target.offset, target.offset + image.length).equals(image));
  t.true(disk.subarray(0, target.offset).equals(Buffer.alloc(target.offset)), 'nothing before the slot was written');
});

test('a slot that does not read back what was written fails with E_HASH_MISMATCH', async (t) => {
  const target = await fileSlot(t, 8 * MiB);
  const image = randomBytes(5 * MiB);
  const writer = await openSlotWriter(target, image.length, {
    segmentBytes: 64 * MiB,
    // the segment in several reads: the mismatch is in the fifth
    readBackBytes: MiB,
    // every byte is written and none read back yet: something else changes one of them
    onWritten: () => {
      const fd = openSync(target.path, 'r+');
      writeSync(fd, Buffer.from([image[4 * MiB]! ^ 0xff]), 0, 1, 4 * MiB);
      closeSync(fd);
    },
  });
  const error = await t.throwsAsync(pipeline(pieces(image), writer.sink));
  t.true(isKubeosError(error) && error.code === 'E_HASH_MISMATCH', String(error));
  t.regex(error?.message ?? '', /reads back different from what was written, at byte 4194304$/);
});

test('more bytes than announced are refused before they are written past the image', async (t) => {
  const target = await fileSlot(t, 4 * MiB);
  const image = randomBytes(MiB);
  const writer = await openSlotWriter(target, image.length - 10);
  const error = await t.throwsAsync(pipeline(Readable.from([image]), writer.sink));
  t.true(isKubeosError(error) && error.code === 'E_SLOT', String(error));
  const disk = await readFile(target.path);
  t.true(disk.subarray(0, image.length).equals(Buffer.alloc(image.length)), 'nothing was written');
});

test('an image bigger than the slot is refused before the slot is opened for writing', async (t) => {
  const target = await fileSlot(t, MiB);
  const error = await t.throwsAsync(openSlotWriter(target, MiB + 1));
  t.true(isKubeosError(error) && error.code === 'E_SLOT', String(error));
});

test('a stream that ends early fails with E_SLOT instead of leaving a short image', async (t) => {
  const target = await fileSlot(t, 4 * MiB);
  const writer = await openSlotWriter(target, 2 * MiB);
  const error = await t.throwsAsync(pipeline(Readable.from([randomBytes(MiB)]), writer.sink));
  t.true(isKubeosError(error) && error.code === 'E_SLOT', String(error));
});

test('the read-back reads the medium (O_DIRECT) at any slot offset and piece size', async (t) => {
  // an offset and pieces that are not 4 KiB multiples: reads are widened to whole aligned blocks
  const target = await fileSlot(t, 12 * MiB, 3 * MiB + 512);
  const image = randomBytes(7 * MiB + 999);
  const writer = await openSlotWriter(target, image.length, { segmentBytes: MiB + 4321, readBackBytes: 256 * 1024 });
  await pipeline(pieces(image), writer.sink);
  t.true((await readFile(target.path)).subarray(target.offset, target.offset + image.length).equals(image));
  // tmpfs took O_DIRECT only from Linux 6.6 on; anywhere else it is the medium
  const fsType = (await execa('stat', ['-f', '-c', '%T', dirname(target.path)])).stdout.trim();
  if (fsType === 'tmpfs') t.true(['medium', 'page-cache'].includes(writer.readBack()));
  else t.is(writer.readBack(), 'medium', `${target.path} is on ${fsType}`);
});

test('buffers from aligned memory go to the slot with O_DIRECT, the last partial block through the cache', async (t) => {
  const target = await fileSlot(t, 16 * MiB, 2 * MiB);
  const chunkSize = MiB;
  const pool = new ChunkPool(4 * chunkSize);
  const image = randomBytes(6 * MiB + 1000);
  const chunks: Buffer[] = [];
  for (let at = 0; at < image.length; at += chunkSize) chunks.push(image.subarray(at, at + chunkSize));
  const writer = await openSlotWriter(target, image.length, { segmentBytes: 2 * MiB, direct: (buffer) => pool.aligned(buffer), release: (buffer) => pool.give(buffer) });
  const pooled = async function* () {
    for (const chunk of chunks) {
      let buffer = pool.take(chunkSize);
      while (buffer === undefined) {
        await new Promise<void>((resolve) => pool.whenFree(resolve));
        buffer = pool.take(chunkSize);
      }
      chunk.copy(buffer);
      yield buffer.subarray(0, chunk.length);
    }
  };
  await pipeline(Readable.from(pooled()), writer.sink);
  t.true((await readFile(target.path)).subarray(target.offset, target.offset + image.length).equals(image));
  const fsType = (await execa('stat', ['-f', '-c', '%T', dirname(target.path)])).stdout.trim();
  if (fsType !== 'tmpfs') t.is(writer.writtenDirect(), 6 * MiB, `the six whole chunks, not the last 1000 bytes (${fsType})`);
});

test('a buffer said to be aligned that is not is written through the cache when O_DIRECT refuses it', async (t) => {
  const target = await fileSlot(t, 8 * MiB);
  // Node's own allocations sit 16 bytes past a page: the kernel refuses them for O_DIRECT (EINVAL)
  const image = Buffer.from(new SharedArrayBuffer(4 * MiB + 16), 16, 4 * MiB);
  randomBytes(4 * MiB).copy(image);
  const writer = await openSlotWriter(target, image.length, { direct: () => true });
  await pipeline(Readable.from([image]), writer.sink);
  t.true((await readFile(target.path)).subarray(0, image.length).equals(image));
  t.is(writer.writtenDirect(), 0);
});
