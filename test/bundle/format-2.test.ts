/**
 * Bundle format 2: the signed manifest carries a content-defined chunk index, and `format` stays 1
 * so that the agent hosts run today (checked out of git at the last format 1 commit) still
 * verifies and installs a new bundle unchanged.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { execa } from 'execa';
import { writeChunkFiles, listChunkFiles } from '../../builder/bundle/write-chunk-files.js';
import { writeBundleChunks } from '../../builder/bundle/write-bundle-chunks.js';
import { decodeChunkIndex, encodeChunkIndex } from '../../runtime/core/bundle/chunk-index-object.js';
import { readUnsignedBundle } from '../../runtime/core/bundle/read-bundle.js';
import { indexBuffer, defaultCdcRule } from '../../runtime/core/bundle/chunk-index.js';
import { readBundle } from '../../runtime/core/bundle/read-bundle.js';
import { validateManifest } from '../../runtime/core/bundle/manifest.js';
import { makeBundle, makeKeys, makeRootfs, metadata, sha256File } from '../helpers/bundle-fixtures.js';
import { checkOutOldRuntime, inlineIndexCommit } from '../helpers/old-runtime.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { makeHost, readSlot, sha256 } from '../agent/host-fixture.js';

test('bundle create signs the content-defined chunk index of the uncompressed image', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 5 * 1024 * 1024 + 77);
  const created = await makeBundle(dir, keys, { rootfs, index: 'inline' });
  const index = created.manifest.payload.index;
  t.truthy(index);
  t.is(created.manifest.format, 1);
  t.deepEqual(index!.rule, defaultCdcRule);
  t.deepEqual(index!.chunks, indexBuffer(await readFile(rootfs)).map((c) => [c.length, c.sha256]));
  // it is under the signature: the reader hands back the signed manifest with it
  const opened = await readBundle(createReadStream(created.path), { trustedKeys: keys.trusted });
  opened.payload.destroy();
  t.deepEqual(opened.manifest.payload.index, index);
});

test('a bundle created with index: \'none\' is format 1 as before', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 1024 * 1024, index: 'none' });
  t.is(created.manifest.payload.index, undefined);
});

const validPayload = (index: unknown): Record<string, unknown> => ({
  format: 1, os: 'kubeos', version: '2.0.0', arch: 'x86_64', compatible: 'c', kernelVersion: 'k', created: '2023-11-14T22:13:20Z', keyId: 'a'.repeat(64),
  payload: { compression: 'zstd', size: 10, sha256: 'b'.repeat(64), uncompressedSize: 100, uncompressedSha256: 'c'.repeat(64), chunkSize: 4194304, chunks: ['d'.repeat(64)], index },
});

const refusesIndex = test.macro(async (t, index: unknown, path: string) => {
  const error = t.throws(() => validateManifest(validPayload(index)), { code: 'E_BUNDLE_INVALID' } as never) as unknown as { details: { problems: { path: string }[] } };
  t.true(error.details.problems.some((p) => p.path.startsWith(path)), JSON.stringify(error.details.problems));
});

test('an index whose lengths do not add up to the image is refused', refusesIndex, { rule: defaultCdcRule, chunks: [[60, 'e'.repeat(64)]] }, '$.payload.index.chunks');
test('an index with an unknown rule is refused', refusesIndex, { rule: { kind: 'fixed', size: 100 }, chunks: [[100, 'e'.repeat(64)]] }, '$.payload.index.rule');
test('an index chunk longer than the rule\'s max is refused', refusesIndex, { rule: defaultCdcRule, chunks: [[300_000, 'e'.repeat(64)]] }, '$.payload.index.chunks[0]');
test('an index chunk that is not a sha256 is refused', refusesIndex, { rule: defaultCdcRule, chunks: [[100, 'E'.repeat(64)]] }, '$.payload.index.chunks[0]');
test('an index that is not an object is refused', refusesIndex, [], '$.payload.index');

test('a valid index passes validation', (t) => {
  t.notThrows(() => validateManifest(validPayload({ rule: defaultCdcRule, chunks: [[40, 'e'.repeat(64)], [60, 'f'.repeat(64)]] })));
});

/** A manifest of a 100-byte image with `indexObject` in place of the inline index. */
const withObject = (indexObject: unknown, extra: Record<string, unknown> = {}): Record<string, unknown> => {
  const m = validPayload(undefined);
  const payload = m['payload'] as Record<string, unknown>;
  delete payload['index'];
  return { ...m, payload: { ...payload, indexObject, ...extra } };
};
const goodObject = { rule: defaultCdcRule, chunkCount: 2, size: 8 + 2 * 36, sha256: 'e'.repeat(64) };

const refusesObject = test.macro(async (t, indexObject: unknown, paths: string[], extra?: Record<string, unknown>) => {
  const error = t.throws(() => validateManifest(withObject(indexObject, extra)), { code: 'E_BUNDLE_INVALID' } as never) as unknown as { details: { problems: { path: string }[] } };
  t.deepEqual(error.details.problems.map((p) => p.path), paths);
});

test('a valid index object passes validation', (t) => {
  t.notThrows(() => validateManifest(withObject(goodObject)));
});
test('an index object that is not an object is refused', refusesObject, 'e'.repeat(64), ['$.payload.indexObject']);
test('an index object with an unknown rule is refused', refusesObject, { ...goodObject, rule: { kind: 'fixed', size: 100 } }, ['$.payload.indexObject.rule']);
test('an index object with a rule the chunker cannot honour is refused', refusesObject, { ...goodObject, rule: { ...defaultCdcRule, avg: 65535 } }, ['$.payload.indexObject.rule']);
test('an index object whose count is not an integer is refused (and so its size cannot be checked)', refusesObject, { ...goodObject, chunkCount: 1.5 }, ['$.payload.indexObject.chunkCount']);
test('an index object of more chunks than the image has bytes is refused', refusesObject, { ...goodObject, chunkCount: 101, size: 8 + 101 * 36 }, ['$.payload.indexObject.chunkCount']);
test('an index object of no chunks for a non-empty image is refused', refusesObject, { ...goodObject, chunkCount: 0, size: 8 }, ['$.payload.indexObject.chunkCount']);
test('an index object of too few chunks for the image under the rule\'s max is refused', refusesObject, { ...goodObject, rule: { kind: 'cdc', min: 64, avg: 128, max: 256 }, chunkCount: 1, size: 44 }, ['$.payload.indexObject.chunkCount'], { uncompressedSize: 1000 });
test('an index object whose size is not what its count encodes to is refused', refusesObject, { ...goodObject, size: 8 + 3 * 36 }, ['$.payload.indexObject.size']);
test('an index object whose sha256 is not hex is refused', refusesObject, { ...goodObject, sha256: 'E'.repeat(64) }, ['$.payload.indexObject.sha256']);
test('every problem of an index object is reported at once', refusesObject, { rule: null, chunkCount: -1, size: 'x', sha256: 1 }, ['$.payload.indexObject.rule', '$.payload.indexObject.chunkCount', '$.payload.indexObject.size', '$.payload.indexObject.sha256']);
test('a manifest carrying both the inline index and an index object is refused', refusesObject, goodObject, ['$.payload'], { index: { rule: defaultCdcRule, chunks: [[100, 'e'.repeat(64)]] } });

test('today\'s reader (format 1, from git) verifies a format 2 bundle and streams the exact image', async (t) => {
  const old = await checkOutOldRuntime(t);
  const oldReader = (await import(pathToFileURL(join(old, 'runtime/core/bundle/read-bundle.ts')).href)) as typeof import('../../runtime/core/bundle/read-bundle.js');
  const oldVerify = (await import(pathToFileURL(join(old, 'runtime/core/bundle/verify-bundle-file.ts')).href)) as typeof import('../../runtime/core/bundle/verify-bundle-file.js');
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 6 * 1024 * 1024 + 5);
  const created = await makeBundle(dir, keys, { rootfs });
  t.truthy(created.manifest.payload.indexObject);

  const opened = await oldReader.readBundle(createReadStream(created.path), { trustedKeys: keys.trusted, compatible: metadata.compatible });
  const hash = createHash('sha256');
  for await (const piece of opened.payload) hash.update(piece as Buffer);
  t.is(hash.digest('hex'), await sha256File(rootfs));
  const verified = await oldVerify.verifyBundleFile(created.path, { trustedKeys: keys.trusted });
  t.is(verified.sha256, created.sha256);
  // the agent's pooled path (worker-thread hashing) too
  const { ChunkPool } = (await import(pathToFileURL(join(old, 'runtime/core/bundle/chunk-pool.ts')).href)) as typeof import('../../runtime/core/bundle/chunk-pool.js');
  const pool = new ChunkPool(16 << 20);
  const pooled = await oldReader.readBundle(createReadStream(created.path), { trustedKeys: keys.trusted, chunkPool: pool });
  let bytes = 0;
  for await (const piece of pooled.payload) {
    bytes += (piece as Buffer).length;
    pool.give(piece as Buffer);
  }
  t.is(bytes, created.manifest.payload.uncompressedSize);
});

test('today\'s agent (from git) installs a format 2 bundle from a channel, byte for byte', async (t) => {
  const old = await checkOutOldRuntime(t);
  const oldUpgrade = (await import(pathToFileURL(join(old, 'runtime/agent/upgrade.ts')).href)) as typeof import('../../runtime/agent/upgrade.js');
  const oldConfig = (await import(pathToFileURL(join(old, 'runtime/agent/agent-config.ts')).href)) as typeof import('../../runtime/agent/agent-config.js');
  const host = await makeHost(t);
  const rootfs = await makeRootfs(join(host.dir, 'v2.img'), 6 * 1024 * 1024);
  const v2 = await makeBundle(host.dir, host.keys, { rootfs, name: 'v2' });
  t.truthy(v2.manifest.payload.indexObject);
  const site = join(host.dir, 'site');
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1, chunks: true });
  const server = await startUpdateServer(t, site);
  const result = await oldUpgrade.upgrade(await oldConfig.loadAgentConfig(host.configPath), { channel: `${server.url}/channels/stable.json`, reboot: false });
  t.like(result, { kind: 'installed', version: '2.0.0', slot: 'B' });
  t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), await sha256File(rootfs));
  t.false(server.requests.some((r) => r.path.startsWith('chunks/')), 'an old host never asks for chunks');
});

test('the agent of main before the index object (from git) accepts its manifest and installs such a bundle in full, never asking for a chunk', async (t) => {
  const old = await checkOutOldRuntime(t, inlineIndexCommit);
  const oldManifest = (await import(pathToFileURL(join(old, 'runtime/core/bundle/manifest.ts')).href)) as typeof import('../../runtime/core/bundle/manifest.js');
  const oldUpgrade = (await import(pathToFileURL(join(old, 'runtime/agent/upgrade.ts')).href)) as typeof import('../../runtime/agent/upgrade.js');
  const oldConfig = (await import(pathToFileURL(join(old, 'runtime/agent/agent-config.ts')).href)) as typeof import('../../runtime/agent/agent-config.js');
  const host = await makeHost(t);
  const rootfs = await makeRootfs(join(host.dir, 'v2.img'), 6 * 1024 * 1024);
  const v2 = await makeBundle(host.dir, host.keys, { rootfs, name: 'v2' });
  t.is(v2.manifest.payload.index, undefined);
  t.truthy(v2.manifest.payload.indexObject);
  t.deepEqual(oldManifest.validateManifest(JSON.parse(JSON.stringify(v2.manifest))), v2.manifest);
  const site = join(host.dir, 'site');
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1, chunks: true });
  const server = await startUpdateServer(t, site);
  const result = await oldUpgrade.upgrade(await oldConfig.loadAgentConfig(host.configPath), { channel: `${server.url}/channels/stable.json`, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.like(result, { version: '2.0.0', slot: 'B', transfer: { mode: 'full' } });
  t.regex(result.transfer.reason ?? '', /no chunk index/);
  t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), await sha256File(rootfs));
  t.false(server.requests.some((r) => r.path.startsWith('chunks/')), 'it asks for neither chunks nor the index object');
});

test('the chunk store holds each distinct chunk once, as a zstd frame named by its sha256, and a second run writes none', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 3 * 1024 * 1024);
  const created = await makeBundle(dir, keys, { rootfs });
  const index = created.index!;
  const store = join(dir, 'chunks');
  const first = await writeChunkFiles(createReadStream(rootfs), index, store);
  const distinct = new Set(index.chunks.map(([, s]) => s));
  t.is(first.written.length, distinct.size);
  t.deepEqual(await listChunkFiles(store), [...distinct].map((s) => `${s}.zst`).sort());
  for (const name of (await listChunkFiles(store)).slice(0, 3)) {
    const { stdout } = await execa('zstd', ['-d', '-c', '-q', join(store, name)], { encoding: 'buffer', stripFinalNewline: false });
    t.is(`${sha256(Buffer.from(stdout))}.zst`, name);
  }
  const second = await writeChunkFiles(createReadStream(rootfs), index, store);
  t.is(second.written.length, 0);
  t.is(second.skipped, distinct.size);
});

test('a chunk store refuses an image that does not match the index', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 1024 * 1024);
  const created = await makeBundle(dir, keys, { rootfs });
  const other = await readFile(rootfs);
  other[1000] = other[1000]! ^ 1;
  await t.throwsAsync(writeChunkFiles([other], created.index!, join(dir, 'chunks')), { code: 'E_HASH_MISMATCH' } as never);
});

test('bundle create with an index object signs its size and sha256, not the index, and hands the index back', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 5 * 1024 * 1024 + 77);
  const created = await makeBundle(dir, keys, { rootfs, index: 'object' });
  const { payload } = created.manifest;
  t.is(payload.index, undefined);
  const expected = indexBuffer(await readFile(rootfs)).map((c): [number, string] => [c.length, c.sha256]);
  t.deepEqual(created.index, { rule: defaultCdcRule, chunks: expected });
  const bytes = encodeChunkIndex(expected);
  t.deepEqual(payload.indexObject, { rule: defaultCdcRule, chunkCount: expected.length, size: bytes.length, sha256: sha256(bytes) });
  const opened = await readBundle(createReadStream(created.path), { trustedKeys: keys.trusted });
  opened.payload.destroy();
  t.deepEqual(opened.manifest.payload.indexObject, payload.indexObject);
});

test('the chunk store of a bundle with an index object is cut from its payload in one pass: the same chunk files as the inline index gives, and the object after them', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 3 * 1024 * 1024 + 5);
  const inline = await makeBundle(dir, keys, { rootfs, name: 'inline', index: 'inline' });
  const object = await makeBundle(dir, keys, { rootfs, name: 'object', index: 'object' });
  const cut = async (path: string, store: string) => {
    const { manifest, payload } = await readUnsignedBundle(createReadStream(path));
    // pieces of odd sizes: the cuts do not depend on them
    const odd = (async function* () {
      for await (const piece of payload) for (let at = 0; at < (piece as Buffer).length; at += 12_345) yield (piece as Buffer).subarray(at, at + 12_345);
    })();
    return writeBundleChunks(odd, manifest, join(dir, store));
  };
  const a = await cut(inline.path, 'a');
  const b = await cut(object.path, 'b');
  t.deepEqual(b.index, inline.manifest.payload.index);
  t.deepEqual(b.written, a.written);
  t.is(a.indexObject, undefined);
  const sha = object.manifest.payload.indexObject!.sha256;
  t.like(b.indexObject, { sha256: sha, written: true });
  t.deepEqual(await listChunkFiles(join(dir, 'b')), [...(await listChunkFiles(join(dir, 'a'))), `${sha}.zst`].sort());
  const { stdout } = await execa('zstd', ['-d', '-c', '-q', join(dir, 'b', `${sha}.zst`)], { encoding: 'buffer', stripFinalNewline: false });
  t.is(sha256(Buffer.from(stdout)), sha);
  t.deepEqual(decodeChunkIndex(Buffer.from(stdout), { max: defaultCdcRule.max, imageSize: object.manifest.payload.uncompressedSize }), inline.manifest.payload.index!.chunks);
  // again: nothing written, the object included
  const again = await cut(object.path, 'b');
  t.is(again.written.length, 0);
  t.like(again.indexObject, { written: false });
});

test('an index cut from the payload that is not the one signed is refused, and no index object is written', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 2 * 1024 * 1024);
  const created = await makeBundle(dir, keys, { rootfs, index: 'object' });
  const signed = created.manifest.payload.indexObject!;
  const other = { ...created.manifest, payload: { ...created.manifest.payload, indexObject: { ...signed, sha256: 'e'.repeat(64) } } };
  const store = join(dir, 'chunks');
  await t.throwsAsync(writeBundleChunks(createReadStream(rootfs), other, store), { code: 'E_BUNDLE_INVALID' } as never);
  t.false((await listChunkFiles(store)).some((name) => name.startsWith('e'.repeat(64)) || name.startsWith(signed.sha256)));
  // an image other than the signed one: its index is not the signed one either
  const image = await readFile(rootfs);
  image[100_000] = image[100_000]! ^ 1;
  await t.throwsAsync(writeBundleChunks([image], created.manifest, join(dir, 'other')), { code: 'E_BUNDLE_INVALID' } as never);
  t.false((await listChunkFiles(join(dir, 'other'))).includes(`${signed.sha256}.zst`));
});
