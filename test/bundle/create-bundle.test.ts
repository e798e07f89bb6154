import test from 'ava';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createBundle } from '../../builder/bundle/create-bundle.js';
import { readBuildInfo, resolveMetadata } from '../../builder/bundle/resolve-metadata.js';
import { readBundle } from '../../runtime/core/bundle/read-bundle.js';
import { verifyBundleFile } from '../../runtime/core/bundle/verify-bundle-file.js';
import { KubeosError } from '../../runtime/core/errors.js';
import { listTarMembers, makeBundle, makeExt4Rootfs, makeKeys, makeRootfs, metadata, sha256File } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';

test('a bundle of an ext4 rootfs verifies and streams back the exact image', async (t) => {
  const dir = await makeTempDir(t);
  const rootfs = await makeExt4Rootfs(t, dir, 32);
  if (rootfs === undefined) return t.pass('mke2fs missing (e2fsprogs); skipped outside CI');
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { rootfs });

  const bundle = await readBundle(createReadStream(created.path), { trustedKeys: keys.trusted, compatible: metadata.compatible });
  const hash = createHash('sha256');
  let bytes = 0;
  for await (const chunk of bundle.payload) {
    hash.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  t.is(bytes, 32 * 1024 * 1024);
  t.is(hash.digest('hex'), await sha256File(rootfs));
  t.is(bundle.keyId, keys.keyId);
  t.is(bundle.manifest.payload.uncompressedSha256, await sha256File(rootfs));
  t.true(bundle.manifest.payload.size < bundle.manifest.payload.uncompressedSize, 'an ext4 image compresses');
});

test('the manifest records metadata, sizes, hashes and one sha256 per chunk', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const size = 9 * 1024 * 1024 + 123;
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), size);
  const created = await makeBundle(dir, keys, { rootfs });
  const m = created.manifest;
  t.like(m, { format: 1, ...metadata, keyId: keys.keyId, created: '2023-11-14T22:13:20Z' });
  t.like(m.payload, { compression: 'zstd', uncompressedSize: size, chunkSize: 4 * 1024 * 1024 });
  t.is(m.payload.chunks.length, 3);
  const image = await readFile(rootfs);
  t.is(m.payload.chunks[2], createHash('sha256').update(image.subarray(8 * 1024 * 1024)).digest('hex'));
  const verified = await verifyBundleFile(created.path, { trustedKeys: keys.trusted });
  t.is(verified.sha256, created.sha256);
  t.is(verified.size, created.size);
});

test('the bundle holds the manifest, then its signature, then the payload', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys);
  const members = listTarMembers(await readFile(created.path));
  t.deepEqual(members.map((m) => m.name), ['manifest.json', 'manifest.sig', 'payload.img.zst']);
  t.is(members[2]?.size, created.manifest.payload.size);
});

test('the same inputs and SOURCE_DATE_EPOCH give a byte-identical bundle', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 7 * 1024 * 1024);
  const make = (name: string) => createBundle({ rootfs, out: join(dir, name), privateKey: keys.privateKey, metadata, sourceDateEpoch: 1234567890 });
  const [a, b] = [await make('a.kubeos'), await make('b.kubeos')];
  t.is(a.sha256, b.sha256);
  t.true((await readFile(a.path)).equals(await readFile(b.path)));
  const c = await createBundle({ rootfs, out: join(dir, 'c.kubeos'), privateKey: keys.privateKey, metadata, sourceDateEpoch: 1234567891 });
  t.not(c.sha256, a.sha256, 'the creation time is part of the bundle');
});

test('zstd writes the payload where it stays in the bundle; a wrong guess of where costs a copy, not other bytes', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 5 * 1024 * 1024 + 7);
  const make = (name: string, extra: { index?: 'none'; payloadOffset?: number } = {}) =>
    createBundle({ rootfs, out: join(dir, name), privateKey: keys.privateKey, metadata, sourceDateEpoch: 1234567890, ...extra });
  const guessed = await make('guessed.kubeos');
  t.false(guessed.copiedPayload, 'the headers took the length guessed for them');
  t.false((await make('no-index.kubeos', { index: 'none' })).copiedPayload);
  for (const payloadOffset of [1536, 1 << 20]) {
    const wrong = await make(`wrong-${payloadOffset}.kubeos`, { payloadOffset });
    t.true(wrong.copiedPayload, `zstd wrote at ${payloadOffset}: the payload is copied into place`);
    t.true((await readFile(wrong.path)).equals(await readFile(guessed.path)), 'the same bytes either way');
    t.is(wrong.sha256, guessed.sha256);
  }
  t.is((await verifyBundleFile(guessed.path, { trustedKeys: keys.trusted })).sha256, guessed.sha256);
  t.deepEqual((await readdir(dir)).filter((name) => name.includes('.tmp')), [], 'no partial or payload file is left');
});

test('build.json next to the rootfs supplies the metadata and flags override it', async (t) => {
  const dir = await makeTempDir(t);
  const rootfs = join(dir, 'rootfs.img');
  await writeFile(join(dir, 'build.json'), JSON.stringify({ image: { name: 'kubeos-min', version: '1.2.3', compatible: 'pc-v1', arch: 'aarch64', kernelVersion: '6.6.1' } }));
  const build = await readBuildInfo(rootfs);
  t.deepEqual(resolveMetadata({}, build?.info), { os: 'kubeos-min', version: '1.2.3', compatible: 'pc-v1', arch: 'aarch64', kernelVersion: '6.6.1' });
  t.like(resolveMetadata({ version: '2.0.0', arch: 'x86_64' }, build?.info), { version: '2.0.0', arch: 'x86_64', compatible: 'pc-v1' });
});

test('missing metadata fails with E_USAGE naming every missing flag', (t) => {
  const error = t.throws(() => resolveMetadata({ version: '2.0.0' }, undefined), { instanceOf: KubeosError });
  t.is(error?.code, 'E_USAGE');
  t.deepEqual(error?.details?.['missing'], ['--os-name', '--compatible', '--kernel-version']);
});

test('a missing rootfs fails with E_USAGE and writes no bundle', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const out = join(dir, 'x.kubeos');
  await t.throwsAsync(createBundle({ rootfs: join(dir, 'nope.img'), out, privateKey: keys.privateKey, metadata }), { instanceOf: KubeosError, code: 'E_USAGE' } as never);
  await t.throwsAsync(readFile(out));
});
