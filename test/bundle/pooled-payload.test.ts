/** The agent's payload path: chunks hashed on a worker, in pooled buffers the reader gives back. */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { ChunkHasher } from '../../runtime/core/bundle/chunk-hasher.js';
import { ChunkPool } from '../../runtime/core/bundle/chunk-pool.js';
import type { PayloadInfo } from '../../runtime/core/bundle/manifest.js';
import { readBundle } from '../../runtime/core/bundle/read-bundle.js';
import { PooledChunkVerifier } from '../../runtime/core/bundle/verify-chunks.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { flipByte, makeBundle, makeKeys, member, metadata } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const MiB = 1 << 20;
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

test('a bundle read with a two-chunk pool streams back the exact image, never holding more than the pool', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 30 * MiB, incompressible: true });
  const pool = new ChunkPool(2 * created.manifest.payload.chunkSize);
  const bundle = await readBundle(createReadStream(created.path), { trustedKeys: keys.trusted, compatible: metadata.compatible, chunkPool: pool });
  const hash = createHash('sha256');
  let held = 0;
  let mostHeld = 0;
  let bytes = 0;
  for await (const chunk of bundle.payload) {
    held += 1;
    mostHeld = Math.max(mostHeld, held);
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
    // give it back later, as the slot writer does after its read-back
    void nextTurn().then(() => {
      held -= 1;
      pool.give(chunk as Buffer);
    });
  }
  t.is(bytes, 30 * MiB);
  t.is(hash.digest('hex'), created.manifest.payload.uncompressedSha256);
  t.true(mostHeld >= 1 && mostHeld <= 2, `held ${mostHeld} chunks at once`);
});

test('the pooled verifier releases the chunks before a bad one and stops at it with E_HASH_MISMATCH', async (t) => {
  const chunkSize = MiB;
  const image = randomBytes(3 * chunkSize + 1000);
  const payload: PayloadInfo = {
    compression: 'zstd', size: 0, sha256: '', uncompressedSize: image.length, uncompressedSha256: sha256(image), chunkSize,
    chunks: [0, 1, 2, 3].map((i) => sha256(image.subarray(i * chunkSize, (i + 1) * chunkSize))),
  };
  const tampered = Buffer.from(image);
  tampered[chunkSize + 17] = tampered[chunkSize + 17]! ^ 0x40;
  const hasher = new ChunkHasher();
  t.teardown(() => hasher.close());
  const released: Buffer[] = [];
  const failures: unknown[] = [];
  const pool = new ChunkPool(8 * chunkSize);
  const verifier = new PooledChunkVerifier(payload, pool, hasher, {
    release: (chunk) => released.push(Buffer.from(chunk)),
    ready: () => {},
    failed: (error) => failures.push(error),
  });
  for (let at = 0; at < tampered.length; at += 100_000) verifier.update(tampered.subarray(at, at + 100_000));
  const error = await t.throwsAsync(verifier.finish());
  t.true(isKubeosError(error) && error.code === 'E_HASH_MISMATCH', String(error));
  t.like((error as { details?: unknown }).details, { check: 'chunk', index: 1 });
  t.is(failures.length, 1);
  t.is(released.length, 1, 'only chunk 0 was released');
  t.true(released[0]!.equals(image.subarray(0, chunkSize)));
});

test('the pooled verifier refuses bytes past the announced size', async (t) => {
  const payload: PayloadInfo = { compression: 'zstd', size: 0, sha256: '', uncompressedSize: 10, uncompressedSha256: '', chunkSize: MiB, chunks: [''] };
  const hasher = new ChunkHasher();
  t.teardown(() => hasher.close());
  const verifier = new PooledChunkVerifier(payload, new ChunkPool(2 * MiB), hasher, { release: () => {}, ready: () => {}, failed: () => {} });
  const error = t.throws(() => verifier.update(Buffer.alloc(11)));
  t.true(isKubeosError(error) && error.code === 'E_HASH_MISMATCH', String(error));
});

test('a payload started at once that fails before anyone reads it keeps its error for the pipeline that does', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 6 * MiB, incompressible: true });
  const tar = await readFile(created.path);
  const payloadMember = member(tar, 'payload.img.zst');
  const bundle = await readBundle(Readable.from([flipByte(tar, payloadMember.dataOffset + 100)]), {
    trustedKeys: keys.trusted, compatible: metadata.compatible, chunkPool: new ChunkPool(4 * created.manifest.payload.chunkSize), startNow: true,
  });
  // nobody reads: the bad first chunk is found (and the stream closed) all the same, without an uncaught error
  await new Promise((resolve) => bundle.payload.once('close', resolve));
  const error = await t.throwsAsync(pipeline(bundle.payload, new Writable({ write: (_chunk, _encoding, callback) => callback() })));
  t.true(isKubeosError(error, 'E_HASH_MISMATCH'), String(error));
});
