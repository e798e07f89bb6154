/**
 * Delta installs of bundles whose manifest names a chunk index object (chunks/<sha256>.zst) instead
 * of carrying the index inline: the host fetches the object once, counts it in what the install
 * cost, and takes the full bundle, saying why, when the object is missing or damaged. Bundles with
 * the inline index still go by delta.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import { open, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { loadAgentConfig } from '../../runtime/agent/agent-config.js';
import { upgrade, type TransferReport } from '../../runtime/agent/upgrade.js';
import { commit } from '../../runtime/agent/commit-rollback-status.js';
import { makeBundle } from '../helpers/bundle-fixtures.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { bootInto, makeHost, MiB, readSlot, sha256, type Host } from './host-fixture.js';
import { imageSize, makeDeltaHost, missingChunks } from './delta-fixture.js';

const objectPath = (sha: string) => `chunks/${sha}.zst`;
/** GETs of chunk files and index objects (the pack map, which these stores lack, is asked for apart). */
const objectRequests = (requests: { path: string }[]) => requests.filter((r) => /^chunks\/[0-9a-f]{64}\.zst$/.test(r.path));

test('a bundle naming an index object installs by delta: the object is fetched once, counted in the transfer, and saved for the next delta', async (t) => {
  const { host, v2, imageSha256, channelUrl, server, site } = await makeDeltaHost(t, { regions: 10, index: 'object' });
  const signed = v2.manifest.payload.indexObject;
  if (signed === undefined) return t.fail('no index object');
  t.is(v2.manifest.payload.index, undefined);
  const missing = await missingChunks(host, v2);
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  const objectBytes = (await stat(join(site, objectPath(signed.sha256)))).size;
  // the chunks, the object and the pack map
  t.like(result.transfer, { mode: 'delta', fetchedChunks: missing.length, indexBytes: objectBytes, requests: missing.length + 2, seedIndex: 'read' });
  t.is(server.requests.filter((r) => r.path === objectPath(signed.sha256)).length, 1);
  t.is(objectRequests(server.requests).length, missing.length + 1);
  // every byte the server sent is in the report: the header's range, the object and the chunks
  t.is(result.transfer.fetchedBytes, (server.bodyBytes['bundles'] ?? 0) + (server.bodyBytes['chunks'] ?? 0));
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
  t.deepEqual(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))), { good: 'A', trying: 'B', triesLeft: 3, failed: undefined });
  // the index kept for slot B is the signed one, as fetched
  const saved = JSON.parse(await readFile(join(host.config.stateDir, 'slot-B.index.json'), 'utf8')) as { image: string; index: unknown };
  t.deepEqual(saved, { image: imageSha256, index: v2.index });
  t.log(`delta with an index object: ${result.transfer.fetchedBytes} bytes (${result.transfer.bundleBytes} of the bundle, ${objectBytes} of the ${signed.size}-byte index object, the rest ${missing.length} chunks)`);
});

const brokenObject = test.macro(async (t, damage: (file: string) => Promise<void>, reason: RegExp) => {
  const { host, v2, imageSha256, channelUrl, site, server } = await makeDeltaHost(t, { index: 'object' });
  await damage(join(site, objectPath(v2.manifest.payload.indexObject!.sha256)));
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.is(result.transfer.mode, 'full');
  t.regex(result.transfer.reason ?? '', reason);
  t.is(result.transfer.fallback, undefined);
  // nothing but the object was asked of the store: it is fetched before anything else
  t.is(server.requests.filter((r) => r.path.startsWith('chunks/')).length, 1);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
  t.is(sha256(await readSlot(host, 'A')), host.v1Sha256);
  t.deepEqual(bootEnvFromGrub(decodeGrubEnv(await readFile(host.bootEnv))), { good: 'A', trying: 'B', triesLeft: 3, failed: undefined });
  // an index never fetched is not saved: the next delta reads the slot
  await t.throwsAsync(readFile(join(host.config.stateDir, 'slot-B.index.json')), { code: 'ENOENT' });
});

test('an index object missing from the store: the full bundle, with the reason', brokenObject, (file) => import('node:fs/promises').then(({ rm }) => rm(file)), /index object .* could not be used \(E_DELTA: .*404/);
test('an index object that is not zstd: the full bundle, with the reason', brokenObject, (file) => writeFile(file, 'not a zstd frame'), /index object .* could not be used \(E_DELTA/);
test('an index object of other bytes than signed: the full bundle, with the reason', brokenObject, async (file) => {
  const { stdout } = await execa('zstd', ['-c', '-q'], { input: Buffer.alloc(3000, 7), encoding: 'buffer', stripFinalNewline: false });
  await writeFile(file, Buffer.from(stdout));
}, /index object .* could not be used \(E_DELTA: .*signed index says/);

test('a bundle with the inline index (made before the index object) still installs by delta, asking for no index object', async (t) => {
  const { host, v2, imageSha256, channelUrl, server } = await makeDeltaHost(t, { index: 'inline' });
  t.truthy(v2.manifest.payload.index);
  t.is(v2.manifest.payload.indexObject, undefined);
  const missing = await missingChunks(host, v2);
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  // the chunks and the pack map
  t.like(result.transfer, { mode: 'delta', fetchedChunks: missing.length, requests: missing.length + 1 });
  t.is(result.transfer.indexBytes, undefined);
  t.is(objectRequests(server.requests).length, missing.length);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});

test('after an index object bundle, the next delta takes the booted slot\'s index from the state dir', async (t) => {
  const { host, image, site, channelUrl } = await makeDeltaHost(t, { regions: 4, index: 'object' });
  const first = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (first.kind !== 'installed') return t.fail(first.kind);
  t.like(first.transfer, { mode: 'delta', seedIndex: 'read' });
  await bootInto(host, 'B', 'trying', '2.0.0');
  await commit(host.config);
  const v3image = Buffer.from(image);
  for (const at of [500_000, 3_000_000]) randomBytes(4096).copy(v3image, at);
  const rootfs = join(host.dir, 'v3.img');
  await writeFile(rootfs, v3image);
  const v3 = await makeBundle(host.dir, host.keys, { rootfs, name: 'v3', version: '3.0.0', index: 'object' });
  await publishToDir(site, v3, host.keys.privateKey, { serial: 2, chunks: true });
  const second = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (second.kind !== 'installed') return t.fail(second.kind);
  t.like(second, { slot: 'A', transfer: { mode: 'delta', seedIndex: 'saved' } });
  t.is(sha256(await readSlot(host, 'A', imageSize)), sha256(v3image));
});

/**
 * A host whose slots hold `slotBytes` (the fixture's are 8 MiB): its own disk, the fixture's
 * state, keys and boot environment. Slot A holds random bytes.
 */
async function makeBigHost(t: ExecutionContext, slotBytes: number, v1: Buffer): Promise<Host & { slots: { A: number; B: number } }> {
  const host = await makeHost(t);
  const disk = join(host.dir, 'big-disk.img');
  await writeFile(disk, Buffer.concat([Buffer.alloc(MiB), v1, Buffer.alloc(slotBytes + MiB)]));
  const slots = { A: MiB, B: MiB + slotBytes };
  const raw = JSON.parse(await readFile(host.configPath, 'utf8')) as Record<string, unknown>;
  const configPath = join(host.dir, 'big-agent.json');
  await writeFile(configPath, JSON.stringify({ ...raw, slots: { A: { path: disk, offset: slots.A, size: slotBytes }, B: { path: disk, offset: slots.B, size: slotBytes } } }));
  return { ...host, disk, configPath, config: await loadAgentConfig(configPath), v1Sha256: sha256(v1), slots };
}

async function readAt(path: string, offset: number, bytes: number): Promise<Buffer> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(bytes);
    await handle.read(buffer, 0, bytes, offset);
    return buffer;
  } finally {
    await handle.close();
  }
}

test('on an image of some 1,600 chunks the index object costs fewer bytes than the inline index, the delta otherwise the same', async (t) => {
  const slotBytes = 136 * MiB;
  const size = 128 * MiB + 999;
  const v1 = randomBytes(slotBytes);
  const inlineHost = await makeBigHost(t, slotBytes, v1);
  const objectHost = await makeBigHost(t, slotBytes, v1);
  const image = Buffer.from(v1.subarray(0, size));
  for (let i = 0; i < 8; i++) randomBytes(4096).copy(image, Math.floor(((i + 0.5) * size) / 8));
  const rootfs = join(inlineHost.dir, 'v2.img');
  await writeFile(rootfs, image);
  const inline = await makeBundle(inlineHost.dir, inlineHost.keys, { rootfs, name: 'inline', index: 'inline' });
  const object = await makeBundle(inlineHost.dir, inlineHost.keys, { rootfs, name: 'object', index: 'object' });
  const site = join(inlineHost.dir, 'site');
  await publishToDir(site, inline, inlineHost.keys.privateKey, { channel: 'inline', serial: 1, chunks: true });
  await publishToDir(site, object, inlineHost.keys.privateKey, { channel: 'object', serial: 1, chunks: true });
  const server = await startUpdateServer(t, site);
  const install = async (host: Host, channel: string): Promise<TransferReport> => {
    const result = await upgrade({ ...host.config, trustedKeys: inlineHost.config.trustedKeys }, { channel: `${server.url}/channels/${channel}.json`, reboot: false });
    if (result.kind !== 'installed') throw new Error(result.kind);
    return result.transfer;
  };
  const a = await install(inlineHost, 'inline');
  const b = await install(objectHost, 'object');
  for (const host of [inlineHost, objectHost]) t.is(sha256(await readAt(host.disk, host.slots.B, size)), sha256(image));
  t.like(a, { mode: 'delta' });
  t.like(b, { mode: 'delta', fetchedChunks: a.fetchedChunks, reusedBytes: a.reusedBytes });
  const chunkBytes = a.fetchedBytes - a.bundleBytes;
  t.is(b.fetchedBytes - b.bundleBytes - b.indexBytes!, chunkBytes);
  t.true(b.fetchedBytes < a.fetchedBytes, `index object ${b.fetchedBytes} bytes, inline index ${a.fetchedBytes}`);
  const chunks = object.manifest.payload.indexObject!.chunkCount;
  t.log(`${chunks} chunks: header ${a.bundleBytes} bytes with the inline index (${(a.bundleBytes / chunks).toFixed(1)} a chunk); ${b.bundleBytes} + ${b.indexBytes} of index object (${((b.bundleBytes + b.indexBytes!) / chunks).toFixed(1)} a chunk) with the object; ${chunkBytes} bytes of chunks either way`);
});
