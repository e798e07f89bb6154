/**
 * Delta installs on file-backed hosts, from a real HTTP server on 127.0.0.1: the agent indexes
 * its booted slot, fetches only the chunks it lacks, and writes a slot identical to a full
 * install; a damaged seed or chunk store is detected, and the full bundle is taken instead.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import { copyFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { indexBuffer } from '../../runtime/core/bundle/chunk-index.js';
import { firstHeaderReadBytes } from '../../runtime/core/bundle/measure-bundle-header.js';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { openDeltaSource } from '../../runtime/agent/delta-source.js';
import { planDelta } from '../../runtime/agent/plan-delta.js';
import { resolveSlot } from '../../runtime/agent/open-slot.js';
import { bootInto, makeHost, readSlot, sha256, slotOffsets, slotSize } from './host-fixture.js';
import { makeBundle, member } from '../helpers/bundle-fixtures.js';
import { publishToDir } from '../helpers/update-server.js';
import { commit } from '../../runtime/agent/commit-rollback-status.js';
import { flipSlotByte, imageSize, makeDeltaHost, missingChunks, readFile, removeChunk, replaceChunk } from './delta-fixture.js';

test('a delta install fetches only the chunks the booted slot lacks and writes a slot byte-identical to a full install', async (t) => {
  const { host, v2, imageSha256, channelUrl, server } = await makeDeltaHost(t, { regions: 10 });
  const missing = await missingChunks(host, v2);
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.is(result.transfer.mode, 'delta');
  t.is(result.transfer.fetchedChunks, missing.length);
  t.is(result.transfer.reusedBytes + missing.reduce((sum, s) => sum + v2.index!.chunks.find(([, x]) => x === s)![0], 0), imageSize);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
  t.deepEqual(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))), { good: 'A', trying: 'B', triesLeft: 3, failed: undefined });
  // one ranged GET of the bundle's header (its manifest), one of the index object, one per missing chunk, over kept-alive connections
  t.deepEqual(server.requests.filter((r) => r.path.startsWith('bundles/')).map((r) => r.range), [`bytes=0-${firstHeaderReadBytes - 1}`]);
  const headerEnd = member(await readFile(v2.path), 'payload.img.zst').dataOffset;
  t.true(headerEnd < firstHeaderReadBytes, `the header is ${headerEnd} bytes`);
  t.is(result.transfer.bundleBytes, firstHeaderReadBytes);
  // and one for the index object, one for the pack map this store lacks
  t.is(server.requests.filter((r) => /^chunks\/[0-9a-f]{64}\.zst$/.test(r.path)).length, missing.length + 1);
  t.true(server.requests.some((r) => r.path === `chunks/${v2.manifest.payload.indexObject!.sha256}.zst`));
  t.is(server.requests.filter((r) => r.path.startsWith('chunks/packs/')).length, 1);
  t.true(server.connections < server.requests.length, `${server.connections} connections for ${server.requests.length} requests`);
  t.true(result.transfer.fetchedBytes < v2.size / 3, `fetched ${result.transfer.fetchedBytes} of a ${v2.size}-byte bundle`);

  // the same v2 installed in full on a twin host (same slot A): slot B is the same, byte for byte
  const twin = await makeHost(t);
  await copyFile(host.disk, twin.disk);
  const zero = Buffer.alloc(slotSize);
  const handle = await (await import('node:fs/promises')).open(twin.disk, 'r+');
  await handle.write(zero, 0, slotSize, slotOffsets.B);
  await handle.close();
  const fullResult = await upgrade({ ...twin.config, trustedKeys: host.config.trustedKeys }, { bundle: v2.path, reboot: false });
  if (fullResult.kind !== 'installed') return t.fail(fullResult.kind);
  t.like(fullResult.transfer, { mode: 'full' });
  t.true((await readSlot(twin, 'B')).equals(await readSlot(host, 'B')));
  t.log(`v2 bundle ${v2.size} bytes; delta fetched ${result.transfer.fetchedBytes} bytes (${result.transfer.bundleBytes} of the bundle for its manifest, the rest ${missing.length} of ${v2.index!.chunks.length} chunks) and reused ${result.transfer.reusedBytes}; the full install fetched ${fullResult.transfer.fetchedBytes}`);
});

test('a byte flipped in the booted slot makes its chunk missing: it is fetched, and the slot is still v2', async (t) => {
  const { host, v2, imageSha256, channelUrl } = await makeDeltaHost(t);
  const before = await missingChunks(host, v2);
  await flipSlotByte(host, 'A', 2_200_000);
  const after = await missingChunks(host, v2);
  t.is(after.length, before.length + 1);
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.like(result.transfer, { mode: 'delta', fetchedChunks: after.length });
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});

test('a seed chunk that changes after it was indexed is caught when read, and fetched instead', async (t) => {
  const { host, v2, image, server } = await makeDeltaHost(t);
  const seed = await resolveSlot('A', host.config.slots.A);
  const plan = planDelta(indexBuffer(await readSlot(host, 'A')), v2.index!);
  await flipSlotByte(host, 'A', 2_000_000);
  const opened = openDeltaSource({ seeds: { booted: seed }, plan, store: `${server.url}/chunks/`, uncompressedSha256: v2.manifest.payload.uncompressedSha256, idleMs: 10_000 });
  const parts: Buffer[] = [];
  for await (const part of opened.stream) parts.push(part as Buffer);
  t.true(Buffer.concat(parts).equals(image));
  t.like(opened.stats(), { seedMismatches: 1, fetchedChunks: plan.fetchChunks + 1 });
});

test('an assembled image whose sha256 is not the signed one fails the delta stream (E_DELTA) before it ends', async (t) => {
  const { host, v2, image, server } = await makeDeltaHost(t);
  const seed = await resolveSlot('A', host.config.slots.A);
  const plan = planDelta(indexBuffer(await readSlot(host, 'A')), v2.index!);
  const opened = openDeltaSource({ seeds: { booted: seed }, plan, store: `${server.url}/chunks/`, uncompressedSha256: 'f'.repeat(64), idleMs: 10_000 });
  let bytes = 0;
  const consumed = (async () => {
    for await (const part of opened.stream) bytes += (part as Buffer).length;
  })();
  await t.throwsAsync(consumed, { code: 'E_DELTA', message: /assembled from the chunk index has sha256 [0-9a-f]{64}, the manifest says f{64}/ } as never);
  // every chunk matched the index: only the whole image's hash, checked at the end, was wrong
  t.true(bytes <= image.length, `${bytes} bytes`);
  t.like(opened.stats(), { seedMismatches: 0, fetchedChunks: plan.fetchChunks });
});

const brokenStore = test.macro(async (t, damage: (site: string, sha256: string) => Promise<void>, code: string) => {
  const { host, v2, imageSha256, channelUrl, site } = await makeDeltaHost(t);
  const missing = await missingChunks(host, v2);
  await damage(site, missing[Math.floor(missing.length / 2)]!);
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.is(result.transfer.mode, 'full');
  t.is(result.transfer.fallback?.code, code);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
  t.is(sha256(await readSlot(host, 'A')), host.v1Sha256);
  t.deepEqual(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))), { good: 'A', trying: 'B', triesLeft: 3, failed: undefined });
});

test('a chunk missing from the store: the full bundle is installed instead', brokenStore, removeChunk, 'E_DELTA');
test('a chunk that decompresses to other bytes: the full bundle is installed instead', brokenStore, async (site, sha256) => {
  const { stdout } = await execa('zstd', ['-c', '-q'], { input: Buffer.alloc(70_000, 1), encoding: 'buffer', stripFinalNewline: false });
  await replaceChunk(site, sha256, Buffer.from(stdout));
}, 'E_DELTA');
test('a chunk that is not zstd: the full bundle is installed instead', brokenStore, (site, sha256) => replaceChunk(site, sha256, Buffer.from('not a zstd frame')), 'E_DELTA');

test('a host whose booted slot shares nothing with the update takes the full bundle, saying why', async (t) => {
  const { host, imageSha256, channelUrl } = await makeDeltaHost(t);
  const handle = await (await import('node:fs/promises')).open(host.disk, 'r+');
  await handle.write((await import('node:crypto')).randomBytes(slotSize), 0, slotSize, slotOffsets.A);
  await handle.close();
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.is(result.transfer.mode, 'full');
  t.regex(result.transfer.reason ?? '', /none of its chunks/);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});

test('a bundle given as a file has no chunk store: full install', async (t) => {
  const { host, v2, imageSha256 } = await makeDeltaHost(t);
  const result = await upgrade(host.config, { bundle: v2.path, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.like(result.transfer, { mode: 'full' });
  t.regex(result.transfer.reason ?? '', /chunk store/);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});

test('the next delta from a slot the agent installed takes that slot\'s signed index from the state dir instead of reading the slot, and a chunk changed since is still fetched', async (t) => {
  const { host, image, site, channelUrl } = await makeDeltaHost(t, { regions: 4 });
  const first = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (first.kind !== 'installed') return t.fail(first.kind);
  t.like(first.transfer, { mode: 'delta', seedIndex: 'read' });
  await bootInto(host, 'B', 'trying', '2.0.0');
  await commit(host.config);

  // v3: v2 with other regions rewritten, published on the same channel
  const v3image = Buffer.from(image);
  for (const at of [500_000, 3_000_000, 5_500_000]) randomBytes(4096).copy(v3image, at);
  const rootfs = join(host.dir, 'v3.img');
  await writeFile(rootfs, v3image);
  const v3 = await makeBundle(host.dir, host.keys, { rootfs, name: 'v3', version: '3.0.0' });
  await publishToDir(site, v3, host.keys.privateKey, { serial: 2, chunks: true });
  // a byte of slot B changed after its install: the saved index no longer matches that chunk
  await flipSlotByte(host, 'B', 2_000_000);
  const second = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (second.kind !== 'installed') return t.fail(second.kind);
  t.like(second, { slot: 'A', transfer: { mode: 'delta', seedIndex: 'saved', seedMismatches: 1 } });
  t.is(sha256(await readSlot(host, 'A', imageSize)), sha256(v3image));
});
