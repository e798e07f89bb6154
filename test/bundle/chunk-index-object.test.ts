/** The binary chunk index (chunk-index-object.ts): 36 bytes a chunk, and untrusted bytes refused with every problem named. */
import test from 'ava';
import { createCipheriv, createHash } from 'node:crypto';
import { defaultCdcRule, indexBuffer } from '../../runtime/core/bundle/chunk-index.js';
import {
  decodeChunkIndex,
  describeIndexObject,
  encodeChunkIndex,
  indexObjectBytes,
  openIndexObject,
} from '../../runtime/core/bundle/chunk-index-object.js';
import type { IndexedChunk } from '../../runtime/core/bundle/manifest.js';
import type { IndexObjectProblem } from '../../runtime/core/bundle/chunk-index-object.js';
import { KubeosError } from '../../runtime/core/errors.js';

const sha = (s: string) => createHash('sha256').update(s).digest('hex');
const chunks: IndexedChunk[] = [[65536, sha('a')], [100_000, sha('b')], [262144, sha('c')], [7, sha('d')]];
const imageSize = chunks.reduce((sum, [length]) => sum + length, 0);
const expected = { max: defaultCdcRule.max, imageSize, chunkCount: chunks.length };

/** The checks that failed, in order (with the chunk for a bad length). */
function problemsOf(t: import('ava').ExecutionContext, bytes: Uint8Array, expect = expected): string[] {
  const error = t.throws(() => decodeChunkIndex(bytes, expect), { instanceOf: KubeosError });
  t.is(error!.code, 'E_BUNDLE_INVALID');
  return (error!.details as { problems: IndexObjectProblem[] }).problems.map((p) => (p.chunk === undefined ? p.check : `${p.check} ${p.chunk}`));
}

test('an index encodes to an 8-byte header and 36 bytes a chunk, and decodes to the same chunks', (t) => {
  const bytes = encodeChunkIndex(chunks);
  t.is(bytes.length, 8 + 36 * chunks.length);
  t.is(bytes.length, indexObjectBytes(chunks.length));
  t.is(bytes.subarray(0, 8).toString('hex'), Buffer.from('KBIX\0\0\0\x01', 'latin1').toString('hex'));
  // big-endian length, then the raw sha256
  t.is(bytes.readUInt32BE(8 + 36), 100_000);
  t.is(bytes.subarray(8 + 36 + 4, 8 + 72).toString('hex'), sha('b'));
  t.deepEqual(decodeChunkIndex(bytes, expected), chunks);
});

test('the index of a real image round-trips, and is under half the size of the inline JSON', (t) => {
  const image = createCipheriv('aes-256-ctr', createHash('sha256').update('index object').digest(), Buffer.alloc(16)).update(Buffer.alloc(8 << 20));
  const index = indexBuffer(image).map((c): IndexedChunk => [c.length, c.sha256]);
  const bytes = encodeChunkIndex(index);
  t.deepEqual(decodeChunkIndex(bytes, { max: defaultCdcRule.max, imageSize: image.length }), index);
  t.true(bytes.length * 2 < JSON.stringify(index).length, `${bytes.length} bytes binary, ${JSON.stringify(index).length} as JSON`);
});

test('an empty index is just the header', (t) => {
  t.deepEqual(decodeChunkIndex(encodeChunkIndex([]), { max: 100, imageSize: 0, chunkCount: 0 }), []);
});

test('bytes that do not start with the magic are refused, saying so', (t) => {
  const bytes = encodeChunkIndex(chunks);
  bytes.write('KBIY', 0, 'latin1');
  t.deepEqual(problemsOf(t, bytes), ['magic']);
});

test('another version is refused, naming it', (t) => {
  const bytes = encodeChunkIndex(chunks);
  bytes.writeUInt32BE(2, 4);
  t.deepEqual(problemsOf(t, bytes), ['version']);
});

test('a header cut short is refused', (t) => {
  t.deepEqual(problemsOf(t, Buffer.from('KBI')), ['header']);
});

test('an index cut inside an entry is refused as truncated, its count and total with it', (t) => {
  t.deepEqual(problemsOf(t, encodeChunkIndex(chunks).subarray(0, 8 + 36 * 3 + 10)), ['truncated', 'count', 'total']);
});

test('a chunk of length 0 or over the rule\'s max is refused, the first five listed', (t) => {
  const many: IndexedChunk[] = Array.from({ length: 20 }, (_, i) => [1000, sha(String(i))]);
  const bytes = encodeChunkIndex(many);
  bytes.writeUInt32BE(0, 8);
  for (let i = 1; i < 9; i++) bytes.writeUInt32BE(defaultCdcRule.max + 1, 8 + 36 * i);
  t.deepEqual(problemsOf(t, bytes, { max: defaultCdcRule.max, imageSize: 20_000, chunkCount: 20 }), ['length 0', 'length 1', 'length 2', 'length 3', 'length 4', 'length']);
});

test('lengths that do not add up to the image are refused', (t) => {
  t.deepEqual(problemsOf(t, encodeChunkIndex(chunks), { ...expected, imageSize: imageSize + 1 }), ['total']);
});

test('an index is opened only when its bytes are the ones the manifest names', (t) => {
  const { info, bytes } = describeIndexObject({ rule: defaultCdcRule, chunks });
  t.like(info, { rule: defaultCdcRule, chunkCount: 4, size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') });
  t.deepEqual(openIndexObject(bytes, info, imageSize), { rule: defaultCdcRule, chunks });
  const other = Buffer.from(bytes);
  other[other.length - 1]! ^= 1;
  const error = t.throws(() => openIndexObject(other, info, imageSize), { instanceOf: KubeosError });
  t.is(error!.code, 'E_BUNDLE_INVALID');
  t.like(error!.details, { expected: { sha256: info.sha256 } });
  t.throws(() => openIndexObject(bytes.subarray(0, bytes.length - 36), info, imageSize), { instanceOf: KubeosError });
});

test('encoding refuses a chunk no index could hold', (t) => {
  t.throws(() => encodeChunkIndex([[0, sha('a')]]), { instanceOf: KubeosError });
  t.throws(() => encodeChunkIndex([[10, 'xyz']]), { instanceOf: KubeosError });
});
