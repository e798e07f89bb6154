/** Fetched chunks are decoded by zstd in batches, cut at the signed lengths; a bad frame is the one named. */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { execa } from 'execa';
import { ChunkDecoder } from '../../runtime/agent/decode-chunks.js';
import { isKubeosError } from '../../runtime/core/errors.js';

// stripFinalNewline: execa drops a last 0x0a byte even from binary output, which cuts a frame ending in one
async function frame(data: Buffer): Promise<Buffer> {
  return Buffer.from((await execa('zstd', ['-c', '-q'], { input: data, encoding: 'buffer', stripFinalNewline: false })).stdout);
}

test('frames handed in together are decoded by fewer zstd processes than frames, each to its own bytes', async (t) => {
  const chunks = Array.from({ length: 40 }, (_, i) => (i % 2 === 0 ? randomBytes(1000 + i * 37) : Buffer.alloc(5000 + i, i)));
  const frames = await Promise.all(chunks.map(frame));
  const decoder = new ChunkDecoder(undefined);
  const decoded = await Promise.all(frames.map((f, i) => decoder.decode(f, chunks[i]!.length, `chunk-${i}`)));
  decoded.forEach((data, i) => t.true(data.equals(chunks[i]!), `chunk ${i}`));
  t.true(decoder.processes < chunks.length / 4, `${decoder.processes} processes for ${chunks.length} frames`);
});

test('a batch holding a bad frame fails only that chunk, named by its URL', async (t) => {
  const chunks = [randomBytes(3000), randomBytes(4000), randomBytes(5000)];
  const frames = await Promise.all(chunks.map(frame));
  frames[1] = Buffer.from('not a zstd frame');
  const decoder = new ChunkDecoder(undefined);
  const results = await Promise.allSettled(frames.map((f, i) => decoder.decode(f, chunks[i]!.length, `chunk-${i}`)));
  t.is(results[0]!.status, 'fulfilled');
  t.is(results[2]!.status, 'fulfilled');
  t.true((results[0] as PromiseFulfilledResult<Buffer>).value.equals(chunks[0]!));
  t.true((results[2] as PromiseFulfilledResult<Buffer>).value.equals(chunks[2]!));
  const failed = results[1] as PromiseRejectedResult;
  t.is(failed.status, 'rejected');
  t.true(isKubeosError(failed.reason) && failed.reason.code === 'E_DELTA');
  t.regex((failed.reason as Error).message, /chunk-1 is not a valid zstd frame/);
});

test('a frame holding more than its chunk comes back one byte long, so its length check fails', async (t) => {
  const decoder = new ChunkDecoder(undefined);
  const data = await decoder.decode(await frame(Buffer.alloc(100_000, 7)), 1000, 'chunk-bomb');
  t.is(data.length, 1001);
});
