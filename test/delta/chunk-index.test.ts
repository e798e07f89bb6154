/** The chunker: boundaries depend on content only, insertions stay local, limits hold. */
import test from 'ava';
import { createCipheriv, createHash } from 'node:crypto';
import { Chunker, defaultCdcRule, indexBuffer, indexStream, type Chunk, type ChunkRule } from '../../runtime/core/bundle/chunk-index.js';
import { diffChunkIndexes } from '../../runtime/core/bundle/diff-chunk-indexes.js';
import { gearWindowBytes, makeGearScanner } from '../../runtime/core/bundle/gear-scan.js';
import { isKubeosError } from '../../runtime/core/errors.js';

/** The same pseudo-random bytes on every machine (AES-256-CTR of zeros under a fixed key). */
function bytes(size: number, seed = 0): Buffer {
  const key = createHash('sha256').update(`chunk-index-test:${seed}`).digest();
  return createCipheriv('aes-256-ctr', key, Buffer.alloc(16)).update(Buffer.alloc(size));
}

const sha = (data: Uint8Array) => createHash('sha256').update(data).digest('hex');
const fixed64k: ChunkRule = { kind: 'fixed', size: 64 * 1024 };
const small: ChunkRule = { kind: 'cdc', min: 1024, avg: 4096, max: 16384 };

function newChunks(before: Chunk[], after: Chunk[]): Chunk[] {
  const have = new Set(before.map((c) => c.sha256));
  return after.filter((c) => !have.has(c.sha256));
}

test('chunks cover the input end to end and each sha256 is of its own bytes', (t) => {
  const data = bytes(3 * 1024 * 1024 + 12345);
  for (const rule of [defaultCdcRule, fixed64k, small] as ChunkRule[]) {
    const chunks = indexBuffer(data, rule);
    let offset = 0;
    for (const c of chunks) {
      t.is(c.offset, offset);
      t.is(c.sha256, sha(data.subarray(c.offset, c.offset + c.length)));
      offset += c.length;
    }
    t.is(offset, data.length);
  }
});

test('the boundaries of a fixed input never change (the gear table and masks are part of the format)', (t) => {
  const chunks = indexBuffer(bytes(4 * 1024 * 1024), defaultCdcRule);
  const offsets = chunks.map((c) => c.offset);
  t.deepEqual(indexBuffer(bytes(4 * 1024 * 1024), defaultCdcRule), chunks);
  t.snapshot({ count: chunks.length, first: offsets.slice(0, 8), digest: sha(Buffer.from(JSON.stringify(chunks))) });
});

test('streaming in pieces of any size gives the whole-buffer result', async (t) => {
  const data = bytes(2 * 1024 * 1024 + 777, 1);
  for (const rule of [defaultCdcRule, fixed64k, small] as ChunkRule[]) {
    const whole = indexBuffer(data, rule);
    async function* pieces(sizes: number[]) {
      let at = 0;
      for (let i = 0; at < data.length; i++) {
        const size = sizes[i % sizes.length]!;
        yield data.subarray(at, at + size);
        at += size;
      }
    }
    t.deepEqual(await indexStream(pieces([1, 7, 65536, 3, 100_000, 16383, 16385]), rule), whole);
    t.deepEqual(await indexStream(pieces([4093, 1, 262144]), rule), whole);
    // a byte at a time through a Chunker directly
    const chunker = new Chunker(rule);
    const out: Chunk[] = [];
    for (let i = 0; i < 300_000; i++) out.push(...chunker.push(data.subarray(i, i + 1)));
    out.push(...chunker.push(data.subarray(300_000)), ...chunker.finish());
    t.deepEqual(out, whole);
  }
});

test('the gear loop in WebAssembly cuts where the one in JavaScript does, across its window and in any pieces', (t) => {
  t.not(makeGearScanner(new Uint32Array(256)), undefined, 'WebAssembly is there to compare');
  // random bytes, a run of zeros (cut at max) and random again, longer than one window
  const data = Buffer.concat([bytes(gearWindowBytes + 4321, 2), Buffer.alloc(600_000), bytes(900_001, 3)]);
  for (const rule of [defaultCdcRule, small] as ChunkRule[]) {
    const index = (wasm: boolean, sizes: number[]) => {
      const chunker = new Chunker(rule, { wasm });
      const out: Chunk[] = [];
      for (let at = 0, i = 0; at < data.length; i++) {
        const size = sizes[i % sizes.length]!;
        out.push(...chunker.push(data.subarray(at, at + size)));
        at += size;
      }
      return [...out, ...chunker.finish()];
    };
    const reference = index(false, [data.length]);
    t.true(reference.length > 10);
    t.deepEqual(index(true, [data.length]), reference, 'one push of more than a window');
    t.deepEqual(index(true, [gearWindowBytes]), reference, 'whole windows');
    t.deepEqual(index(true, [1, 65537, 3, gearWindowBytes + 1, 16383]), reference, 'odd pieces');
  }
});

test('every chunk but the last is within min and max, and a run of zeros is cut at max', (t) => {
  for (const rule of [defaultCdcRule, small] as const) {
    const data = Buffer.concat([bytes(2 * 1024 * 1024, 2), Buffer.alloc(1024 * 1024), bytes(100_000, 3)]);
    const chunks = indexBuffer(data, rule);
    for (const c of chunks.slice(0, -1)) {
      t.true(c.length >= rule.min, `chunk at ${c.offset} is ${c.length} bytes, under ${rule.min}`);
      t.true(c.length <= rule.max, `chunk at ${c.offset} is ${c.length} bytes, over ${rule.max}`);
    }
    const zeros = chunks.filter((c) => c.offset >= 2 * 1024 * 1024 + rule.max && c.offset + c.length <= 3 * 1024 * 1024);
    t.true(zeros.length > 0);
    for (const c of zeros) t.is(c.length, rule.max);
    const sizes = chunks.slice(0, -1).map((c) => c.length);
    const mean = sizes.reduce((a, b) => a + b, 0) / sizes.length;
    t.true(mean > rule.avg / 2 && mean < rule.avg * 2.5, `mean chunk ${mean} far from avg ${rule.avg}`);
  }
  const fixed = indexBuffer(bytes(200_000), fixed64k);
  t.deepEqual(fixed.map((c) => c.length), [65536, 65536, 65536, 200_000 - 3 * 65536]);
});

test('an insertion early in the input changes only the chunks near it with CDC, and every fixed block after it', (t) => {
  const before = bytes(8 * 1024 * 1024, 4);
  const after = Buffer.concat([before.subarray(0, 100_000), Buffer.from('an inserted line\n'), before.subarray(100_000)]);
  const cdc = newChunks(indexBuffer(before), indexBuffer(after));
  t.true(cdc.length <= 2, `${cdc.length} new CDC chunks`);
  t.true(cdc.every((c) => c.offset < 100_000 + defaultCdcRule.max * 2));
  const fixedBefore = indexBuffer(before, fixed64k);
  const fixed = newChunks(fixedBefore, indexBuffer(after, fixed64k));
  t.true(fixed.length >= fixedBefore.length - 2, `only ${fixed.length} of ${fixedBefore.length} fixed blocks changed`);
  t.true(diffChunkIndexes(indexBuffer(before), indexBuffer(after)).missingBytes < 3 * defaultCdcRule.max);
});

test('a diff fetches a chunk repeated in the new image once, and nothing the old image holds', (t) => {
  const a = bytes(300_000, 5);
  const b = bytes(300_000, 6);
  const old = indexBuffer(a, fixed64k);
  const wanted = indexBuffer(Buffer.concat([a.subarray(0, 65536), b.subarray(0, 65536), b.subarray(0, 65536)]), fixed64k);
  t.deepEqual(diffChunkIndexes(old, wanted), { chunks: 3, bytes: 3 * 65536, missingChunks: 1, missingBytes: 65536, reusedBytes: 2 * 65536 });
});

test('a rule the chunker cannot honour is refused with E_USAGE', (t) => {
  for (const rule of [{ kind: 'cdc', min: 4096, avg: 3000, max: 16384 }, { kind: 'cdc', min: 8192, avg: 4096, max: 16384 }, { kind: 'fixed', size: 0 }] as ChunkRule[]) {
    const error = t.throws(() => new Chunker(rule));
    t.true(isKubeosError(error, 'E_USAGE'));
  }
});
