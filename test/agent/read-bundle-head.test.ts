/**
 * A bundle's header read by Range requests (the start of a delta install): exactly the header is
 * asked for, a big manifest costs one more request, and a server that ignores ranges or a header
 * that does not verify gives nothing, so the install reads the bundle from its start as ever.
 */
import test, { type ExecutionContext } from 'ava';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { readBundleHead } from '../../runtime/agent/read-bundle-head.js';
import type { IndexForm } from '../../builder/bundle/create-bundle.js';
import { firstHeaderReadBytes as first } from '../../runtime/core/bundle/measure-bundle-header.js';
import { loadTrustedKeys } from '../../runtime/core/crypto/keys.js';
import { flipByte, makeBundle, makeKeys, makeRootfs, member, metadata } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';

/** A big image's manifest is over the first range only with the inline index (bundles made before the index object). */
async function setup(t: ExecutionContext, imageBytes: number, index: IndexForm = 'object') {
  const dir = await makeTempDir(t, 'kubeos-bundle-head-');
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), imageBytes, imageBytes);
  const bundle = await makeBundle(dir, keys, { rootfs, name: 'v2', index });
  const site = join(dir, 'site');
  await publishToDir(site, bundle, keys.privateKey, { serial: 1 });
  const server = await startUpdateServer(t, site);
  const headerEnd = member(await readFile(bundle.path), 'payload.img.zst').dataOffset;
  const trustedKeys = await loadTrustedKeys([keys.publicPath]);
  const read = (url = `${server.url}/bundles/${bundle.sha256}.kubeos`) => readBundleHead(url, { trustedKeys, compatible: metadata.compatible, signal: new AbortController().signal, idleMs: 5000 });
  return { dir, keys, bundle, server, headerEnd, read, trustedKeys };
}

test('a small bundle\'s header comes in one 32 KiB range, verified', async (t) => {
  const { bundle, server, headerEnd, read } = await setup(t, 2 << 20);
  const head = await read();
  t.truthy(head);
  head!.bundle.payload.destroy();
  t.is(head!.bundle.manifest.payload.uncompressedSha256, bundle.manifest.payload.uncompressedSha256);
  t.true(headerEnd < first);
  t.deepEqual(server.requests.map((r) => r.range), [`bytes=0-${first - 1}`]);
  t.is(head!.bytes, first);
});

test('a manifest over the first 32 KiB costs one more range, for its rest and the signature, and no more than 4 KiB past the header', async (t) => {
  const { bundle, server, headerEnd, read } = await setup(t, 80 << 20, 'inline');
  t.true(headerEnd > first, `header ${headerEnd} bytes`);
  const head = await read();
  t.truthy(head);
  head!.bundle.payload.destroy();
  t.is(head!.bundle.manifest.version, bundle.manifest.version);
  t.is(server.requests.length, 2);
  t.is(server.requests[0]!.range, `bytes=0-${first - 1}`);
  t.regex(server.requests[1]!.range ?? '', new RegExp(`^bytes=${first}-\\d+$`));
  t.true(head!.bytes >= headerEnd && head!.bytes <= headerEnd + 4096, `${head!.bytes} bytes read for a ${headerEnd}-byte header`);
});

test('a server that ignores ranges, on a big manifest, gives nothing (the install then reads the bundle whole)', async (t) => {
  const { bundle, read } = await setup(t, 80 << 20, 'inline');
  const data = await readFile(bundle.path);
  // every request answered 200 from byte 0; the first 32 KiB are sent, then the body waits (as a
  // big body would while the client reads): the client cuts it off there
  const ranges: (string | undefined)[] = [];
  const server = createServer((req, res) => {
    ranges.push(req.headers.range);
    res.writeHead(200, { 'content-length': String(data.length) });
    res.write(data.subarray(0, first));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  t.is(await read(`http://127.0.0.1:${(server.address() as AddressInfo).port}/bundles/${bundle.sha256}.kubeos`), undefined);
  // the second range, for the manifest's rest, was answered with the object from 0: refused
  t.is(ranges.length, 2);
  t.is(ranges[0], `bytes=0-${first - 1}`);
  t.regex(ranges[1] ?? '', new RegExp(`^bytes=${first}-\\d+$`));
});

test('a header whose manifest does not verify gives nothing: the full read reports it', async (t) => {
  const { bundle, server, read } = await setup(t, 2 << 20);
  const whole = await readFile(bundle.path);
  const manifest = member(whole, 'manifest.json');
  const { writeFile } = await import('node:fs/promises');
  await writeFile(join(server.root, `bundles/${bundle.sha256}.kubeos`), flipByte(whole, manifest.dataOffset + 10));
  t.is(await read(), undefined);
});
