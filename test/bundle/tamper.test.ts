import test, { type ExecutionContext } from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createHash } from 'node:crypto';
import { verifyBundleFile } from '../../runtime/core/bundle/verify-bundle-file.js';
import { ChunkVerifier, verifyPayloadStream } from '../../runtime/core/bundle/verify-chunks.js';
import type { PayloadInfo } from '../../runtime/core/bundle/manifest.js';
import { isKubeosError, type ErrorCode } from '../../runtime/core/errors.js';
import { flipByte, makeBundle, makeKeys, member, sha256File, type TestKeys } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';

type Tamper = (bundle: Buffer) => Buffer;

async function setup(t: ExecutionContext) {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 9 * 1024 * 1024 });
  return { dir, keys, created, bytes: await readFile(created.path) };
}

async function expectCode(t: ExecutionContext, path: string, trusted: TestKeys['trusted'], code: ErrorCode, compatible?: string) {
  const before = await sha256File(path);
  const error = await t.throwsAsync(verifyBundleFile(path, { trustedKeys: trusted, compatible }));
  t.true(isKubeosError(error), String(error));
  t.is((error as { code?: string }).code, code, (error as Error).message);
  t.is(await sha256File(path), before, 'verifying changes nothing');
}

const rejects = test.macro({
  async exec(t, tamper: Tamper, code: ErrorCode) {
    const { dir, keys, bytes } = await setup(t);
    const bad = join(dir, 'bad.kubeos');
    await writeFile(bad, tamper(bytes));
    await expectCode(t, bad, keys.trusted, code);
  },
  title: (provided = '') => provided,
});

const payloadAt = (fraction: number): Tamper => (b) => {
  const p = member(b, 'payload.img.zst');
  return flipByte(b, p.dataOffset + Math.floor(p.size * fraction));
};

test('a flipped byte at the start of the payload fails with E_HASH_MISMATCH', rejects, payloadAt(0.01), 'E_HASH_MISMATCH');
test('a flipped byte in the middle of the payload fails with E_HASH_MISMATCH', rejects, payloadAt(0.5), 'E_HASH_MISMATCH');
test('a flipped last byte of the payload fails with E_HASH_MISMATCH', rejects, (b) => {
  const p = member(b, 'payload.img.zst');
  return flipByte(b, p.dataOffset + p.size - 1);
}, 'E_HASH_MISMATCH');
test('a flipped byte in the manifest fails with E_SIGNATURE', rejects, (b) => {
  const m = member(b, 'manifest.json');
  return flipByte(b, m.dataOffset + Math.floor(m.size / 2));
}, 'E_SIGNATURE');
test('a changed version in the manifest fails with E_SIGNATURE', rejects, (b) => {
  const m = member(b, 'manifest.json');
  const at = b.indexOf('"version":"2.0.0"', m.dataOffset) + '"version":"'.length;
  const copy = Buffer.from(b);
  copy.write('9', at);
  return copy;
}, 'E_SIGNATURE');
test('a flipped byte in the signature fails with E_SIGNATURE', rejects, (b) => {
  const s = member(b, 'manifest.sig');
  return flipByte(b, b.indexOf('"sig":"', s.dataOffset) + 12);
}, 'E_SIGNATURE');
test('a flipped byte in the signature key id fails with E_UNKNOWN_KEY', rejects, (b) => {
  const s = member(b, 'manifest.sig');
  return flipByte(b, b.indexOf('"keyid":"', s.dataOffset) + 12);
}, 'E_UNKNOWN_KEY');
test('a bundle cut inside the first tar header fails with E_BUNDLE_TRUNCATED', rejects, (b) => b.subarray(0, 100), 'E_BUNDLE_TRUNCATED');
test('a bundle cut inside the manifest fails with E_BUNDLE_TRUNCATED', rejects, (b) => b.subarray(0, member(b, 'manifest.json').dataOffset + 20), 'E_BUNDLE_TRUNCATED');
test('a bundle cut after the signature fails with E_BUNDLE_TRUNCATED', rejects, (b) => b.subarray(0, member(b, 'payload.img.zst').dataOffset - 512), 'E_BUNDLE_TRUNCATED');
test('a bundle cut inside the payload fails with E_BUNDLE_TRUNCATED', rejects, (b) => b.subarray(0, Math.floor(b.length / 2)), 'E_BUNDLE_TRUNCATED');
test('a bundle missing the last payload byte fails with E_BUNDLE_TRUNCATED', rejects, (b) => {
  const p = member(b, 'payload.img.zst');
  return b.subarray(0, p.dataOffset + p.size - 1);
}, 'E_BUNDLE_TRUNCATED');
test('a file that is not a tar fails with E_BUNDLE_INVALID', rejects, (b) => Buffer.concat([Buffer.from('hello world\n'.repeat(100)), b]), 'E_BUNDLE_INVALID');
test('an extra member after the payload fails with E_BUNDLE_INVALID', rejects, (b) => {
  // Replace the end-of-archive blocks with a copy of the manifest member.
  const p = member(b, 'payload.img.zst');
  const end = p.dataOffset + Math.ceil(p.size / 512) * 512;
  const m = member(b, 'manifest.json');
  const extra = b.subarray(m.dataOffset - 512, m.dataOffset + Math.ceil(m.size / 512) * 512);
  const copy = Buffer.from(extra);
  copy.write('extra.json\0', 0);
  // The header checksum covers the name: recompute it.
  copy.fill(' ', 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += copy[i] ?? 0;
  copy.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148);
  return Buffer.concat([b.subarray(0, end), copy, Buffer.alloc(1024)]);
}, 'E_BUNDLE_INVALID');

test('a bundle signed by an unknown key fails with E_UNKNOWN_KEY', async (t) => {
  const { dir, created } = await setup(t);
  const stranger = await makeKeys(dir, 'stranger');
  await expectCode(t, created.path, stranger.trusted, 'E_UNKNOWN_KEY');
});

test('a bundle for another compatible string fails with E_INCOMPATIBLE', async (t) => {
  const { keys, created } = await setup(t);
  await expectCode(t, created.path, keys.trusted, 'E_INCOMPATIBLE', 'some-other-board');
});

function payloadOf(image: Buffer, chunkSize: number): PayloadInfo {
  const count = Math.ceil(image.length / chunkSize);
  const chunks = Array.from({ length: count }, (_, i) => createHash('sha256').update(image.subarray(i * chunkSize, (i + 1) * chunkSize)).digest('hex'));
  return {
    compression: 'zstd', size: 0, sha256: '0'.repeat(64), uncompressedSize: image.length,
    uncompressedSha256: createHash('sha256').update(image).digest('hex'), chunkSize, chunks,
  };
}

test('the chunk verifier releases only chunks that matched, up to the bad one', (t) => {
  const chunkSize = 4096;
  const image = Buffer.alloc(chunkSize * 3 + 100, 7);
  const verifier = new ChunkVerifier(payloadOf(image, chunkSize));
  const bad = flipByte(image, chunkSize * 2 + 10);
  const released = verifier.update(bad.subarray(0, 5000));
  released.push(...verifier.update(bad.subarray(5000, chunkSize * 2 + 20)));
  t.deepEqual(Buffer.concat(released), image.subarray(0, chunkSize * 2));
  const error = t.throws(() => verifier.update(bad.subarray(chunkSize * 2 + 20)));
  t.is((error as { code?: string }).code, 'E_HASH_MISMATCH');
  t.like((error as { details?: object }).details, { check: 'chunk', index: 2 });
});

test('verifyPayloadStream passes a good payload through and rejects a short one with E_BUNDLE_TRUNCATED', async (t) => {
  const chunkSize = 4096;
  const image = Buffer.alloc(chunkSize * 2 + 5, 3);
  const payload = payloadOf(image, chunkSize);
  const collect = async (input: Buffer) => {
    const out: Buffer[] = [];
    await pipeline(Readable.from([input.subarray(0, 5000), input.subarray(5000)]), verifyPayloadStream(payload), async function* (source) {
      for await (const chunk of source) out.push(chunk as Buffer);
    });
    return Buffer.concat(out);
  };
  t.deepEqual(await collect(image), image);
  const error = await t.throwsAsync(collect(image.subarray(0, image.length - 1)));
  t.is((error as { code?: string }).code, 'E_BUNDLE_TRUNCATED');
});
