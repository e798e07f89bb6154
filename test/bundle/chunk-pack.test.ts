/**
 * The chunk pack of a release: its map's codec (untrusted bytes refused with E_DELTA) and the
 * writer that concatenates the chunk files written now, in image order, under the map.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { writeChunkFiles } from '../../builder/bundle/write-chunk-files.js';
import { writeChunkPack } from '../../builder/bundle/write-chunk-pack.js';
import { decodePackMap, encodePackMap, packPaths } from '../../runtime/core/bundle/chunk-pack.js';
import { defaultCdcRule, indexBuffer } from '../../runtime/core/bundle/chunk-index.js';
import type { ChunkIndexInfo } from '../../runtime/core/bundle/manifest.js';
import { makeTempDir } from '../helpers/temp-dir.js';

test('a pack map gives back its entries with their offsets in the pack', (t) => {
  const bytes = encodePackMap([{ position: 0, size: 10 }, { position: 3, size: 7 }, { position: 9, size: 1 }]);
  t.is(bytes.length, 12 + 3 * 8);
  t.deepEqual(decodePackMap(bytes, 10, 'm'), [
    { position: 0, offset: 0, size: 10 },
    { position: 3, offset: 10, size: 7 },
    { position: 9, offset: 17, size: 1 },
  ]);
});

const refused = test.macro((t, bytes: Buffer, chunks: number, problem: RegExp) => {
  const error = t.throws(() => decodePackMap(bytes, chunks, 'http://store/packs/x.map'), { code: 'E_DELTA' } as never);
  t.regex(error!.message, problem);
  t.regex(error!.message, /packs\/x\.map/);
});

test('a map without the magic is refused', refused, Buffer.from('{"not":"a map"}'), 5, /KBPACK01/);
test('a map cut short is refused', refused, encodePackMap([{ position: 0, size: 1 }, { position: 1, size: 1 }]).subarray(0, 20), 5, /2 entries take 28/);
test('a map whose positions do not ascend is refused', refused, encodePackMap([{ position: 2, size: 1 }, { position: 2, size: 1 }]), 5, /entry 1 names position 2/);
test('a map naming a position past the index is refused', refused, encodePackMap([{ position: 5, size: 1 }]), 5, /position 5/);
test('a map with an empty frame is refused', refused, encodePackMap([{ position: 0, size: 0 }]), 5, /empty frame/);

test('the pack holds the chunk files written now, in image order, and a second pack of the same image is not written', async (t) => {
  const dir = await makeTempDir(t);
  const store = join(dir, 'chunks');
  const image = randomBytes(1_500_000);
  const chunks = indexBuffer(image);
  t.true(chunks.length > 8, `${chunks.length} chunks`);
  const index: ChunkIndexInfo = { rule: defaultCdcRule, chunks: chunks.map((c) => [c.length, c.sha256]) };
  // the store holds the first three chunks already (an earlier release): they are not in this pack
  const earlier: ChunkIndexInfo = { rule: defaultCdcRule, chunks: index.chunks.slice(0, 3) };
  await writeChunkFiles([image.subarray(0, chunks[3]!.offset)], earlier, store);
  const { written } = await writeChunkFiles([image], index, store);
  t.is(written.length, chunks.length - 3);
  const pack = await writeChunkPack(store, index, written, 'a'.repeat(64));
  t.like(pack, { ...packPaths('a'.repeat(64)), chunks: chunks.length - 3 });
  const files = await Promise.all(written.map((sha256) => readFile(join(store, `${sha256}.zst`))));
  const packed = await readFile(join(store, pack!.pack));
  t.true(packed.equals(Buffer.concat(files)));
  t.is(pack!.bytes, packed.length);
  const entries = decodePackMap(await readFile(join(store, pack!.map)), index.chunks.length, 'map');
  t.deepEqual(entries.map((e) => e.position), chunks.slice(3).map((_, i) => i + 3));
  t.deepEqual(entries.map((e) => e.size), files.map((f) => f.length));

  // the same image again writes nothing: its first pack stays
  t.is(await writeChunkPack(store, index, written.slice(0, 1), 'a'.repeat(64)), undefined);
  t.true((await readFile(join(store, pack!.pack))).equals(packed));
  t.is(await writeChunkPack(store, index, [], 'b'.repeat(64)), undefined);
});
