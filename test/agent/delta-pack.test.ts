/**
 * Delta installs from a store with the release's pack (chunks/packs/<image>.pack and .map): the
 * chunks a host lacks come by Range requests over runs of the pack, checked against the signed
 * index like chunk files; a damaged pack or map costs chunk files, never a wrong byte.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { decodePackMap, packPaths } from '../../runtime/core/bundle/chunk-pack.js';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { readSlot, sha256 } from './host-fixture.js';
import { imageSize, makeDeltaHost, missingChunks } from './delta-fixture.js';

async function packHost(t: Parameters<typeof makeDeltaHost>[0]) {
  const made = await makeDeltaHost(t, { regions: 10, pack: true, v1Published: true });
  const paths = packPaths(made.v2.manifest.payload.uncompressedSha256);
  return { ...made, pack: join(made.site, 'chunks', paths.pack), map: join(made.site, 'chunks', paths.map), paths };
}

/** GETs of chunk files, the bundle's index object (`v2`'s) left out. */
const chunkFileRequests = (requests: { path: string }[], v2: { manifest: { payload: { indexObject?: { sha256: string } } } }) =>
  requests.filter((r) => /^chunks\/[0-9a-f]{64}\.zst$/.test(r.path) && r.path !== `chunks/${v2.manifest.payload.indexObject?.sha256}.zst`);

test('the chunks a host lacks come from the pack in one Range request, decoded by one zstd, and the slot is the image', async (t) => {
  const { host, v2, imageSha256, channelUrl, server, pack, map, paths } = await packHost(t);
  const missing = await missingChunks(host, v2);
  t.true(missing.length >= 10, `${missing.length} chunks missing`);
  // the store held v1 before: the pack holds what v2 added, which is what the host lacks
  const entries = decodePackMap(await readFile(map), v2.index!.chunks.length, map);
  t.deepEqual(new Set(entries.map((e) => v2.index!.chunks[e.position]![1])), new Set(missing));

  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.like(result.transfer, { mode: 'delta', fetchedChunks: missing.length, packedChunks: missing.length, decoders: 1 });
  t.is(result.transfer.packProblem, undefined);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
  const packSize = (await readFile(pack)).length;
  t.deepEqual(server.requests.filter((r) => r.path.startsWith('chunks/')).map((r) => [r.path, r.range]), [
    [`chunks/${v2.manifest.payload.indexObject!.sha256}.zst`, undefined],
    [`chunks/${paths.map}`, undefined],
    [`chunks/${paths.pack}`, `bytes=0-${packSize - 1}`],
  ]);
  t.deepEqual(chunkFileRequests(server.requests, v2), []);
  t.log(`${missing.length} missing chunks in ${result.transfer.requests} requests (map + pack), ${result.transfer.fetchedBytes} bytes received`);
});

test('a damaged frame in the pack costs that chunk its own file: the slot is still the image', async (t) => {
  const { host, v2, imageSha256, channelUrl, server, pack } = await packHost(t);
  const missing = await missingChunks(host, v2);
  const bytes = await readFile(pack);
  bytes.fill(0x55, bytes.length >> 1, (bytes.length >> 1) + 64);
  await writeFile(pack, bytes);
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.like(result.transfer, { mode: 'delta', fetchedChunks: missing.length });
  t.regex(result.transfer.packProblem ?? '', /that chunk came from its own file/);
  // the chunk the damage is in, and those zstd had not handed out when it stopped, from their
  // files; the rest of the run from a second request after the damaged frame
  const files = chunkFileRequests(server.requests, v2).length;
  t.log(`${files} chunk files, ${result.transfer.packedChunks} of ${missing.length} chunks from the pack: ${result.transfer.packProblem}`);
  t.true(files >= 1 && files <= 4, `${files} chunk files fetched`);
  t.is(result.transfer.packedChunks, missing.length - files);
  t.true(server.requests.filter((r) => r.path.endsWith('.pack')).length >= 2, 'the rest of the run came from a request of its own');
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});

test('a pack map that is not one is left aside: the chunks come one GET each', async (t) => {
  const { host, v2, imageSha256, channelUrl, server, map } = await packHost(t);
  const missing = await missingChunks(host, v2);
  await writeFile(map, '<html>not found</html>');
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.like(result.transfer, { mode: 'delta', fetchedChunks: missing.length, packedChunks: 0 });
  t.regex(result.transfer.packProblem ?? '', /pack map could not be used.*KBPACK01/);
  t.is(chunkFileRequests(server.requests, v2).length, missing.length);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});

test('a store with no pack (a release published before packs) is read chunk by chunk', async (t) => {
  const { host, v2, imageSha256, channelUrl, server } = await makeDeltaHost(t, { regions: 4 });
  const missing = await missingChunks(host, v2);
  const result = await upgrade(host.config, { channel: channelUrl, reboot: false });
  if (result.kind !== 'installed') return t.fail(result.kind);
  t.like(result.transfer, { mode: 'delta', fetchedChunks: missing.length, packedChunks: 0, packProblem: 'the store has no pack for this image' });
  t.is(chunkFileRequests(server.requests, v2).length, missing.length);
  t.is(sha256(await readSlot(host, 'B', imageSize)), imageSha256);
});
