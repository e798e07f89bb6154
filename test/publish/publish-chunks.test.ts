/** kubeos publish and the chunk store of format 2 bundles, against a real S3 server (s3rver). */
import test, { type ExecutionContext } from 'ava';
import { indexBuffer } from '../../runtime/core/bundle/chunk-index.js';
import { openIndexObject } from '../../runtime/core/bundle/chunk-index-object.js';
import { decodePackMap, packPaths } from '../../runtime/core/bundle/chunk-pack.js';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GetObjectCommand } from '@aws-sdk/client-s3';
import { execa } from 'execa';
import { publishBundle } from '../../builder/bundle/publish-bundle.js';
import { makeBundle, makeKeys, makeRootfs } from '../helpers/bundle-fixtures.js';
import { startS3 } from '../helpers/s3-server.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { makeHost, readSlot, sha256 } from '../agent/host-fixture.js';
import { upgrade } from '../../runtime/agent/upgrade.js';

async function setup(t: ExecutionContext) {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const s3 = await startS3(t);
  const publish = (bundle: string) => publishBundle({ bundle, client: s3.client, bucket: s3.bucket, prefix: 'kubeos', channel: 'stable', privateKey: keys.privateKey });
  return { dir, keys, s3, publish };
}

test('publishing a format 2 bundle stores each distinct chunk once as chunks/<sha256>.zst, a zstd frame of exactly those bytes, and its index object beside them', async (t) => {
  const { dir, keys, s3, publish } = await setup(t);
  const created = await makeBundle(dir, keys, { size: 4 * 1024 * 1024 });
  const signed = created.manifest.payload.indexObject!;
  const result = await publish(created.path);
  const distinct = new Set(created.index!.chunks.map(([, s]) => s));
  const objectKey = `kubeos/chunks/${signed.sha256}.zst`;
  t.like(result.chunks, { chunks: distinct.size, uploaded: distinct.size, alreadyStored: 0, indexObject: { key: objectKey, uploaded: true } });
  const stored = await s3.listKeys();
  const keys_ = stored.filter((k) => /^kubeos\/chunks\/[0-9a-f]{64}\.zst$/.test(k));
  t.deepEqual(keys_, [...[...distinct].map((s) => `kubeos/chunks/${s}.zst`), objectKey].sort());
  const get = async (key: string) => Buffer.from(await (await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }))).Body!.transformToByteArray());
  const unzstd = async (key: string) => {
    const frame = await get(key);
    const { stdout } = await execa('zstd', ['-d', '-c', '-q'], { input: frame, encoding: 'buffer', stripFinalNewline: false });
    return { frame, data: Buffer.from(stdout) };
  };
  for (const key of keys_.slice(0, 4)) t.is(`kubeos/chunks/${sha256((await unzstd(key)).data)}.zst`, key);
  // the index object is the signed one, and decodes to the index the bundle was cut by
  const { frame, data } = await unzstd(objectKey);
  t.is(result.chunks!.indexObject!.bytes, frame.length);
  t.deepEqual(openIndexObject(data, signed, created.manifest.payload.uncompressedSize), created.index);
  // and the chunks' frames once more as the release's pack, in image order, its map last (the index object is not in it)
  const paths = packPaths(created.manifest.payload.uncompressedSha256);
  t.deepEqual(stored.filter((k) => k.startsWith('kubeos/chunks/packs/')), [`kubeos/chunks/${paths.map}`, `kubeos/chunks/${paths.pack}`]);
  const index = created.index!;
  const entries = decodePackMap(await get(`kubeos/chunks/${paths.map}`), index.chunks.length, 'map');
  t.is(entries.length, distinct.size);
  t.like(result.chunks?.pack, { key: `kubeos/chunks/${paths.pack}`, chunks: distinct.size });
  const frames = await Promise.all(entries.map((e) => get(`kubeos/chunks/${index.chunks[e.position]![1]}.zst`)));
  t.true((await get(`kubeos/chunks/${paths.pack}`)).equals(Buffer.concat(frames)));
});

test('the next release uploads only the chunks the store lacks, and publishing it again uploads none', async (t) => {
  const { dir, keys, publish } = await setup(t);
  const v1 = await makeRootfs(join(dir, 'v1.img'), 4 * 1024 * 1024, 4 * 1024 * 1024);
  const first = await publish((await makeBundle(dir, keys, { rootfs: v1, name: 'v1', version: '1.0.0' })).path);
  // v2: 100 KiB in the middle rewritten
  const image = await readFile(v1);
  image.fill(7, 2 * 1024 * 1024, 2 * 1024 * 1024 + 100 * 1024);
  const v2 = join(dir, 'v2.img');
  await writeFile(v2, image);
  const created = await makeBundle(dir, keys, { rootfs: v2, name: 'v2', version: '2.0.0' });
  const second = await publish(created.path);
  t.truthy(first.chunks && second.chunks);
  t.true(second.chunks!.alreadyStored > 0.8 * second.chunks!.chunks, JSON.stringify(second.chunks));
  t.true(second.chunks!.uploaded >= 1 && second.chunks!.uploaded <= 6, JSON.stringify(second.chunks));
  t.log(`v1 uploaded ${first.chunks!.uploadedBytes} chunk bytes, v2 ${second.chunks!.uploadedBytes} (${second.chunks!.uploaded} of ${second.chunks!.chunks})`);
  // v2's pack holds the chunks v2 added, not v1's
  t.like(second.chunks!.pack, { chunks: second.chunks!.uploaded });
  const again = await publish(created.path);
  t.like(again.chunks, { uploaded: 0, uploadedBytes: 0, indexObject: { uploaded: false } });
  t.is(again.chunks!.pack, undefined);
});

test('a format 1 bundle publishes no chunks', async (t) => {
  const { dir, keys, s3, publish } = await setup(t);
  const created = await makeBundle(dir, keys, { size: 1024 * 1024, index: 'none' });
  const result = await publish(created.path);
  t.is(result.chunks, undefined);
  t.false((await s3.listKeys()).some((k) => k.includes('chunks/')));
});

test('a host installs by delta from what kubeos publish put in the bucket (s3rver, anonymous GETs)', async (t) => {
  const host = await makeHost(t);
  const s3 = await startS3(t);
  const image = Buffer.from((await readSlot(host, 'A')).subarray(0, 6 * 1024 * 1024));
  image.fill(9, 3 * 1024 * 1024, 3 * 1024 * 1024 + 20_000);
  const rootfs = join(host.dir, 'v2.img');
  await writeFile(rootfs, image);
  const v2 = await makeBundle(host.dir, host.keys, { rootfs, name: 'v2' });
  const published = await publishBundle({ bundle: v2.path, client: s3.client, bucket: s3.bucket, prefix: 'kubeos', channel: 'stable', privateKey: host.keys.privateKey });
  const result = await upgrade(host.config, { channel: `${s3.baseUrl}kubeos/channels/stable.json`, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.is(result.transfer.mode, 'delta', JSON.stringify(result.transfer));
  // exactly the chunks slot A lacks (how many depends on where the random slot's boundaries fall: 2 to 7 seen)
  const held = new Set(indexBuffer(await readSlot(host, 'A')).map((c) => c.sha256));
  const missing = v2.index!.chunks.filter(([, s]) => !held.has(s));
  t.true(missing.length <= 10, `${missing.length} chunks missing`);
  t.is(result.transfer.fetchedChunks, missing.length, JSON.stringify(result.transfer));
  // from the pack publish uploaded, by Range requests to s3rver (the first release: it holds every chunk), after the index object
  t.is(result.transfer.packedChunks, missing.length, JSON.stringify(result.transfer));
  t.true(result.transfer.indexBytes! > v2.manifest.payload.indexObject!.size, JSON.stringify(result.transfer));
  t.true(result.transfer.fetchedBytes < 65536 + result.transfer.indexBytes! + missing.reduce((sum, [length]) => sum + length, 0) * 1.1, JSON.stringify(result.transfer));
  t.is(sha256(await readSlot(host, 'B', image.length)), sha256(image));
  t.log(`published ${published.chunks!.uploaded} chunks; the host fetched ${result.transfer.fetchedBytes} bytes (${result.transfer.fetchedChunks} chunks in ${result.transfer.requests} requests, ${result.transfer.bundleBytes} of the bundle) for a ${v2.size}-byte bundle`);
});
