/**
 * bundle verify of a bundle big enough to hash on worker threads (32 MiB and more): the same
 * checks, and the same verdicts, as on the reader's own thread.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { buffer } from 'node:stream/consumers';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { ChunkHasher } from '../../runtime/core/bundle/chunk-hasher.js';
import { ChunkPool } from '../../runtime/core/bundle/chunk-pool.js';
import type { BundleManifest, PayloadInfo } from '../../runtime/core/bundle/manifest.js';
import { OffThreadHashTap, StreamHasher } from '../../runtime/core/bundle/stream-hasher.js';
import { verifyBundleFile } from '../../runtime/core/bundle/verify-bundle-file.js';
import { PooledChunkVerifier } from '../../runtime/core/bundle/verify-chunks.js';
import { canonicalJson } from '../../runtime/core/crypto/canonical-json.js';
import { signBytes } from '../../runtime/core/crypto/signature.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { flipByte, makeBundle, makeKeys, member, sha256File, type TestKeys } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const MiB = 1 << 20;
const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** The bundle at `path` with its manifest edited and signed again by `keys`: a signer's mistake. */
async function resign(path: string, out: string, keys: TestKeys, edit: (payload: PayloadInfo) => void): Promise<void> {
  const bytes = await readFile(path);
  const at = (name: string) => {
    const m = member(bytes, name);
    return bytes.subarray(m.dataOffset, m.dataOffset + m.size);
  };
  const manifest = JSON.parse(at('manifest.json').toString('utf8')) as BundleManifest;
  edit(manifest.payload);
  const manifestBytes = Buffer.from(canonicalJson(manifest));
  const signatureBytes = Buffer.from(canonicalJson(signBytes(keys.privateKey, manifestBytes)));
  const pack = tar.pack();
  const written = buffer(pack);
  for (const [name, data] of [['manifest.json', manifestBytes], ['manifest.sig', signatureBytes], ['payload.img.zst', at('payload.img.zst')]] as const) {
    await pipeline(Readable.from([data]), pack.entry({ name, size: data.length, mode: 0o644, mtime: new Date(0), uid: 0, gid: 0 }));
  }
  pack.finalize();
  await writeFile(out, await written);
}

async function bigBundle(t: ExecutionContext) {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 40 * MiB, incompressible: true });
  return { dir, keys, created };
}

async function rejects(t: ExecutionContext, path: string, keys: TestKeys, code: string, check?: string) {
  const error = await verifyBundleFile(path, { trustedKeys: keys.trusted }).then(() => undefined, (e: unknown) => e);
  t.is(isKubeosError(error) ? error.code : String(error), code);
  if (check !== undefined) t.like((error as { details?: unknown }).details, { check });
}

test('a 40 MiB bundle verifies on the workers and reports the size and sha256 of its file', async (t) => {
  const { keys, created } = await bigBundle(t);
  const verified = await verifyBundleFile(created.path, { trustedKeys: keys.trusted });
  t.is(verified.sha256, await sha256File(created.path));
  t.is(verified.sha256, created.sha256);
  t.is(verified.size, created.size);
  t.is(verified.manifest.payload.uncompressedSha256, created.manifest.payload.uncompressedSha256);
});

test('a flipped payload byte in a 40 MiB bundle fails with E_HASH_MISMATCH', async (t) => {
  const { dir, keys, created } = await bigBundle(t);
  const bytes = await readFile(created.path);
  const payload = member(bytes, 'payload.img.zst');
  const bad = join(dir, 'flipped.kubeos');
  await writeFile(bad, flipByte(bytes, payload.dataOffset + Math.floor(payload.size / 2)));
  await rejects(t, bad, keys, 'E_HASH_MISMATCH');
});

test('a signed manifest whose image sha256 is wrong (every chunk right) fails with E_HASH_MISMATCH on the workers', async (t) => {
  const { dir, keys, created } = await bigBundle(t);
  const bad = join(dir, 'wrong-image-sha.kubeos');
  await resign(created.path, bad, keys, (p) => {
    p.uncompressedSha256 = sha256(Buffer.from('another image'));
  });
  await rejects(t, bad, keys, 'E_HASH_MISMATCH', 'uncompressedSha256');
});

test('a signed manifest whose compressed sha256 is wrong fails with E_HASH_MISMATCH on the workers', async (t) => {
  const { dir, keys, created } = await bigBundle(t);
  const bad = join(dir, 'wrong-payload-sha.kubeos');
  await resign(created.path, bad, keys, (p) => {
    p.sha256 = sha256(Buffer.from('another payload'));
  });
  await rejects(t, bad, keys, 'E_HASH_MISMATCH', 'sha256');
});

test('the pooled verifier with an image hasher fails at the end when every chunk matched but the image sha256 does not', async (t) => {
  const chunkSize = MiB;
  const image = randomBytes(3 * chunkSize + 1000);
  const payload: PayloadInfo = {
    compression: 'zstd', size: 0, sha256: '', uncompressedSize: image.length, uncompressedSha256: sha256(Buffer.from('not it')), chunkSize,
    chunks: [0, 1, 2, 3].map((i) => sha256(image.subarray(i * chunkSize, (i + 1) * chunkSize))),
  };
  const hasher = new ChunkHasher();
  const whole = new StreamHasher();
  t.teardown(async () => {
    await hasher.close();
    await whole.close();
  });
  const pool = new ChunkPool(8 * chunkSize);
  const released: number[] = [];
  const verifier = new PooledChunkVerifier(payload, pool, hasher, {
    release: (chunk) => {
      released.push(chunk.length);
      pool.give(chunk);
    },
    ready: () => {},
    failed: () => {},
  }, whole);
  for (let at = 0; at < image.length; at += 100_000) verifier.update(image.subarray(at, at + 100_000));
  const error = await t.throwsAsync(verifier.finish());
  t.true(isKubeosError(error) && error.code === 'E_HASH_MISMATCH', String(error));
  t.like((error as { details?: unknown }).details, { check: 'uncompressedSha256', actual: sha256(image) });
  t.deepEqual(released, [chunkSize, chunkSize, chunkSize, 1000]);
});

test('OffThreadHashTap passes bytes through unchanged and hashes them, whatever the piece sizes', async (t) => {
  const data = randomBytes(9 * MiB + 12345);
  const pieces: Buffer[] = [];
  for (let at = 0, i = 0; at < data.length; i++) {
    const size = [1, 4096, 700_000, 3 * MiB][i % 4]!;
    pieces.push(data.subarray(at, at + size));
    at += size;
  }
  const tap = new OffThreadHashTap();
  const out = buffer(tap);
  await pipeline(Readable.from(pieces), tap);
  t.true((await out).equals(data));
  t.is(tap.bytes, data.length);
  t.is(await tap.digest(), sha256(data));
});

test('ChunkHasher gives the same digests while its worker boots (on this thread) as after (on the worker)', async (t) => {
  const hasher = new ChunkHasher();
  t.teardown(() => hasher.close());
  const pool = new ChunkPool(4 * MiB);
  const chunk = pool.take(MiB)!;
  randomBytes(MiB).copy(chunk);
  const length = MiB - 5;
  const early = hasher.digest(chunk, length);
  await hasher.booted;
  t.is(await hasher.digest(chunk, length), sha256(chunk.subarray(0, length)));
  t.is(await early, sha256(chunk.subarray(0, length)));
});
