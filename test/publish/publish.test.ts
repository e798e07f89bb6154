import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { publishBundle, type PublishOptions } from '../../builder/bundle/publish-bundle.js';
import { fetchBundle, fetchChannel } from '../../runtime/core/channel/fetch-channel.js';
import { releaseHistoryLimit } from '../../runtime/core/channel/channel-index.js';
import { channelUrlOf } from '../../runtime/core/channel/layout.js';
import { flipByte, makeBundle, makeKeys, member, sha256File } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { s3Credentials, startS3, type TestS3 } from '../helpers/s3-server.js';
import { startConditionalFront } from '../helpers/conditional-s3-front.js';
import { makeS3Client } from '../../builder/bundle/s3-client.js';

const MiB = 1024 * 1024;

async function getText(s3: TestS3, key: string): Promise<string> {
  const object = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  return (await object.Body?.transformToString()) ?? '';
}

async function setup(t: ExecutionContext) {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const s3 = await startS3(t);
  const publish = (bundle: string, extra: Partial<PublishOptions> = {}) =>
    publishBundle({ bundle, client: s3.client, bucket: s3.bucket, prefix: 'kubeos', channel: 'stable', privateKey: keys.privateKey, ...extra });
  return { dir, keys, s3, publish, channelUrl: channelUrlOf(`${s3.baseUrl}kubeos/`, 'stable') };
}

test('publishing stores the bundle under its sha256, then a signed channel index hosts can GET and verify', async (t) => {
  const { dir, keys, s3, publish, channelUrl } = await setup(t);
  const created = await makeBundle(dir, keys);
  const result = await publish(created.path);
  t.like(result, { channel: 'stable', serial: 1, version: '2.0.0', uploaded: true, sha256: created.sha256 });
  t.deepEqual((await s3.listKeys()).filter((k) => !k.startsWith('kubeos/chunks/')), [`kubeos/bundles/${created.sha256}.kubeos`, 'kubeos/channels/stable.json']);

  // What a host does: plain GETs, verify the index, stream and verify the bundle.
  const channel = await fetchChannel(channelUrl, { trustedKeys: keys.trusted, lastSerial: 0, channel: 'stable' });
  t.like(channel.signed, { serial: 1, version: '2.0.0', bundle: { size: created.size, sha256: created.sha256 } });
  const bundle = await fetchBundle(channel, { trustedKeys: keys.trusted, compatible: created.manifest.compatible });
  const hash = createHash('sha256');
  for await (const chunk of bundle.payload) hash.update(chunk as Buffer);
  t.is(hash.digest('hex'), await sha256File(join(dir, 'rootfs.img')));
  const download = await fetch(channel.bundleUrl);
  t.is(createHash('sha256').update(Buffer.from(await download.arrayBuffer())).digest('hex'), created.sha256);
});

test('publishing again bumps the serial and skips the bundle already stored', async (t) => {
  const { dir, keys, publish } = await setup(t);
  const created = await makeBundle(dir, keys);
  await publish(created.path);
  const again = await publish(created.path);
  t.like(again, { serial: 2, uploaded: false, previous: { serial: 1, version: '2.0.0' } });
});

test('a large bundle goes up in parts and reads back byte for byte', async (t) => {
  const { dir, keys, s3, publish } = await setup(t);
  const created = await makeBundle(dir, keys, { size: 16 * MiB, incompressible: true });
  t.true(created.size > 10 * MiB, 'the fixture is mostly incompressible');
  const parts: number[] = [];
  const result = await publish(created.path, { partSize: 5 * MiB, multipartThreshold: 5 * MiB, onProgress: (step, f) => step === 'upload' && f !== undefined && parts.push(f) });
  t.is(parts.at(-1), 1);
  const head = await s3.client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: result.bundleKey }));
  t.is(head.ContentLength, created.size);
  const object = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: result.bundleKey }));
  const body = Buffer.from((await object.Body?.transformToByteArray()) ?? []);
  t.is(createHash('sha256').update(body).digest('hex'), created.sha256);
});

test('a tampered bundle is refused with E_HASH_MISMATCH and nothing is published', async (t) => {
  const { dir, keys, s3, publish } = await setup(t);
  const created = await makeBundle(dir, keys);
  const bytes = await readFile(created.path);
  const bad = join(dir, 'bad.kubeos');
  const p = member(bytes, 'payload.img.zst');
  await writeFile(bad, flipByte(bytes, p.dataOffset + Math.floor(p.size / 2)));
  await t.throwsAsync(publish(bad), { code: 'E_HASH_MISMATCH' } as never);
  t.deepEqual(await s3.listKeys(), []);
});

test('a bundle signed by another key is refused with E_UNKNOWN_KEY and nothing is published', async (t) => {
  const { dir, publish, s3 } = await setup(t);
  const stranger = await makeKeys(dir, 'stranger');
  const created = await makeBundle(dir, stranger);
  await t.throwsAsync(publish(created.path), { code: 'E_UNKNOWN_KEY' } as never);
  t.deepEqual(await s3.listKeys(), []);
});

test('an upload interrupted halfway leaves the channel naming the previous, complete bundle', async (t) => {
  const { dir, keys, s3, publish, channelUrl } = await setup(t);
  const first = await makeBundle(dir, keys, { name: 'v2', version: '2.0.0' });
  await publish(first.path);
  const channelBefore = await getText(s3, 'kubeos/channels/stable.json');

  const second = await makeBundle(dir, keys, { name: 'v3', version: '3.0.0', size: 16 * MiB, incompressible: true });
  const abort = new AbortController();
  let maxSent = 0;
  const error = await t.throwsAsync(
    publish(second.path, {
      partSize: 5 * MiB,
      multipartThreshold: 5 * MiB,
      signal: abort.signal,
      onProgress: (step, fraction = 0) => {
        if (step !== 'upload') return;
        maxSent = Math.max(maxSent, fraction);
        if (fraction >= 0.5) abort.abort(new Error('interrupted by the test'));
      },
    }),
  );
  t.is((error as { code?: string }).code, 'E_PUBLISH');
  t.true(maxSent >= 0.5 && maxSent < 1, `upload stopped part way (${maxSent})`);

  t.is(await getText(s3, 'kubeos/channels/stable.json'), channelBefore, 'the channel object is unchanged');
  t.false((await s3.listKeys()).includes(`kubeos/bundles/${second.sha256}.kubeos`), 'no partial bundle is visible');
  const channel = await fetchChannel(channelUrl, { trustedKeys: keys.trusted });
  t.like(channel.signed, { serial: 1, version: '2.0.0', bundle: { sha256: first.sha256 } });
  const bundle = await fetchBundle(channel, { trustedKeys: keys.trusted });
  for await (const _ of bundle.payload) {
    // drain: the stream ends only when every check passed
  }

  // The retry completes and moves the channel on.
  const retry = await publish(second.path, { partSize: 5 * MiB, multipartThreshold: 5 * MiB });
  t.like(retry, { serial: 2, version: '3.0.0', uploaded: true });
});

test('publishing a lower version fails with E_DOWNGRADE and leaves the channel unchanged', async (t) => {
  const { dir, keys, s3, publish } = await setup(t);
  const newer = await makeBundle(dir, keys, { name: 'new', version: '2.10.0' });
  const older = await makeBundle(dir, keys, { name: 'old', version: '2.9.0' });
  await publish(newer.path);
  const before = await getText(s3, 'kubeos/channels/stable.json');
  await t.throwsAsync(publish(older.path), { code: 'E_DOWNGRADE' } as never);
  t.is(await getText(s3, 'kubeos/channels/stable.json'), before);
  t.like(await publish(older.path, { allowDowngrade: true }), { serial: 2, version: '2.9.0' });
});

test('an expired channel is refused by hosts with E_CHANNEL_EXPIRED and re-publishing renews it', async (t) => {
  const { dir, keys, publish, channelUrl } = await setup(t);
  const created = await makeBundle(dir, keys);
  const longAgo = new Date(Date.now() - 10 * 86400_000);
  await publish(created.path, { now: () => longAgo, expiresInSeconds: 86400 });
  await t.throwsAsync(fetchChannel(channelUrl, { trustedKeys: keys.trusted }), { code: 'E_CHANNEL_EXPIRED' } as never);
  await publish(created.path);
  t.is((await fetchChannel(channelUrl, { trustedKeys: keys.trusted })).signed.serial, 2);
});

test('a host that saw a higher serial refuses the index with E_CHANNEL_ROLLBACK', async (t) => {
  const { dir, keys, publish, channelUrl } = await setup(t);
  const created = await makeBundle(dir, keys);
  await publish(created.path);
  await t.throwsAsync(fetchChannel(channelUrl, { trustedKeys: keys.trusted, lastSerial: 2 }), { code: 'E_CHANNEL_ROLLBACK' } as never);
});

test('a channel index signed by an unknown key stops the publish with E_UNKNOWN_KEY', async (t) => {
  const { dir, keys, s3, publish } = await setup(t);
  const created = await makeBundle(dir, keys);
  const stranger = await makeKeys(dir, 'stranger');
  await publishBundle({ bundle: created.path, client: s3.client, bucket: s3.bucket, prefix: 'kubeos', channel: 'stable', privateKey: stranger.privateKey, extraTrustedKeys: keys.trusted });
  const before = await getText(s3, 'kubeos/channels/stable.json');
  await t.throwsAsync(publish(created.path), { code: 'E_UNKNOWN_KEY' } as never);
  t.is(await getText(s3, 'kubeos/channels/stable.json'), before);
});

test('a retry replaces a partial object that a broken server left at the bundle key', async (t) => {
  const { dir, keys, s3, publish } = await setup(t);
  const created = await makeBundle(dir, keys);
  const key = `kubeos/bundles/${created.sha256}.kubeos`;
  const partial = (await readFile(created.path)).subarray(0, 1000);
  await s3.client.send(new PutObjectCommand({ Bucket: s3.bucket, Key: key, Body: partial, ContentLength: partial.length, Metadata: { sha256: created.sha256 } }));
  t.like(await publish(created.path), { uploaded: true });
  const object = await s3.client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: key }));
  const body = Buffer.from((await object.Body?.transformToByteArray()) ?? []);
  t.is(createHash('sha256').update(body).digest('hex'), created.sha256);
});

test('each publish lists the releases the channel offered before, newest first and bounded, under the signature', async (t) => {
  const { dir, keys, publish, channelUrl } = await setup(t);
  const versions = Array.from({ length: releaseHistoryLimit + 2 }, (_, i) => `2.${i}.0`);
  const bundles = [];
  for (const version of versions) bundles.push(await makeBundle(dir, keys, { name: `v${version}`, version, size: 64 * 1024 }));
  for (const b of bundles) await publish(b.path);
  await publish(bundles.at(-1)!.path); // the same release again: listed once
  const { signed } = await fetchChannel(channelUrl, { trustedKeys: keys.trusted });
  const listed = signed.releases!.map((r) => r.version);
  t.deepEqual(listed, [...versions].reverse().slice(0, releaseHistoryLimit));
  const second = signed.releases![1]!;
  t.like(second.bundle, { sha256: bundles.at(-2)!.sha256, size: bundles.at(-2)!.size, path: `bundles/${bundles.at(-2)!.sha256}.kubeos` });
});

test('two publishers at once on a server with conditional writes: one wins each serial, the other signs the next on top, and no serial is written twice', async (t) => {
  const { dir, keys, s3 } = await setup(t);
  // s3rver lacks conditional writes; the front emulates them (and holds both index writes until both arrive, so they race for certain)
  const front = await startConditionalFront(s3.endpoint, { holdPuts: 2 });
  t.teardown(() => front.stop());
  const client = makeS3Client({ endpoint: front.endpoint, region: 'us-east-1', ...s3Credentials });
  t.teardown(() => client.destroy());
  const v1 = await makeBundle(dir, keys, { name: 'v1', version: '1.1.0', size: 1024 * 1024 });
  const v2 = await makeBundle(dir, keys, { name: 'v2', version: '1.2.0', size: 1024 * 1024 });
  const publish = (bundle: string) => publishBundle({ bundle, client, bucket: s3.bucket, prefix: 'kubeos', channel: 'stable', privateKey: keys.privateKey, allowDowngrade: true });
  const results = await Promise.all([publish(v1.path), publish(v2.path)]);
  t.deepEqual(results.map((r) => r.serial).sort(), [1, 2]);
  t.is(front.refused, 1, 'the second write of serial 1 was refused');
  const serials = front.written.filter((w) => w.key.endsWith('/channels/stable.json')).map((w) => (JSON.parse(w.body.toString()) as { signed: { serial: number } }).signed.serial);
  t.deepEqual(serials, [1, 2], 'each serial written once');
  // the index in the bucket is the winner of serial 2, and lists both releases
  const stored = JSON.parse(await getText(s3, 'kubeos/channels/stable.json')) as { signed: { serial: number; version: string; releases: Array<{ version: string }> } };
  t.is(stored.signed.serial, 2);
  t.is(stored.signed.version, results.find((r) => r.serial === 2)!.version);
  t.deepEqual(stored.signed.releases.map((r) => r.version).sort(), ['1.1.0', '1.2.0']);
});
