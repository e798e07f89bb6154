/** The agent on a file-backed host: upgrade, every refused input, resume, lock, commit, rollback. */
import test from 'ava';
import { readFile, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { createBundle } from '../../builder/bundle/create-bundle.js';
import { bootEnvFromGrub } from '../../runtime/core/boot-env.js';
import { decodeGrubEnv } from '../../runtime/core/grubenv.js';
import { isKubeosError, type ErrorCode } from '../../runtime/core/errors.js';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { verifyBundleFile } from '../../runtime/core/bundle/verify-bundle-file.js';
import { commit, rollback, status } from '../../runtime/agent/commit-rollback-status.js';
import { flipByte, makeKeys, makeRootfs, member, metadata } from '../helpers/bundle-fixtures.js';
import { bundleDownloads, publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { bootInto, makeHost, makeV2, MiB, readSlot, serveTwoReleases, setBootEnv, sha256, snapshot } from './host-fixture.js';

async function env(path: string) {
  return bootEnvFromGrub(decodeGrubEnv(await readFile(path)));
}

test('a full upgrade writes the standby slot only, verifies it, and then tries it with boot counting', async (t) => {
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  const site = join(host.dir, 'site');
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1 });
  const server = await startUpdateServer(t, site);
  const before = await snapshot(host);

  const result = await upgrade(host.config, { channel: `${server.url}/channels/stable.json`, reboot: false });

  // the image is whole 4 KiB blocks at an aligned offset: all of it goes past the page cache
  t.like(result, { kind: 'installed', version: '2.0.0', slot: 'B', from: '1.0.0', readBack: 'medium', directBytes: v2.manifest.payload.uncompressedSize });
  t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), v2.manifest.payload.uncompressedSha256);
  t.is(sha256(await readSlot(host, 'A')), before.slotA);
  t.deepEqual(await env(host.bootEnv), { good: 'A', trying: 'B', triesLeft: 3, failed: undefined });
  const s = await status(host.config);
  t.like(s.slots, { A: { state: 'good', version: '1.0.0' }, B: { state: 'trying', version: '2.0.0', triesLeft: 3 } });
});

const refusals: [string, ErrorCode, (host: Awaited<ReturnType<typeof makeHost>>, dir: string) => Promise<Buffer>][] = [
  ['a flipped byte in the payload', 'E_HASH_MISMATCH', async (host) => {
    const tar = await readFile((await makeV2(host)).path);
    const p = member(tar, 'payload.img.zst');
    return flipByte(tar, p.dataOffset + Math.floor(p.size / 2));
  }],
  ['a flipped byte in the manifest', 'E_SIGNATURE', async (host) => {
    const tar = await readFile((await makeV2(host)).path);
    return flipByte(tar, member(tar, 'manifest.json').dataOffset + 40);
  }],
  ['a flipped byte in the signature', 'E_SIGNATURE', async (host) => {
    const tar = await readFile((await makeV2(host)).path);
    const sig = member(tar, 'manifest.sig');
    const text = tar.subarray(sig.dataOffset, sig.dataOffset + sig.size).toString();
    return flipByte(tar, sig.dataOffset + text.indexOf('"sig"') + 10);
  }],
  ['a bundle signed by an unknown key', 'E_UNKNOWN_KEY', async (host, dir) => {
    const stranger = await makeKeys(dir, 'stranger');
    const rootfs = await makeRootfs(join(dir, 'stranger.img'), 4 * MiB);
    return readFile((await createBundle({ rootfs, out: join(dir, 'stranger.kubeos'), privateKey: stranger.privateKey, metadata, sourceDateEpoch: 1 })).path);
  }],
  ['a bundle for other hosts (compatible)', 'E_INCOMPATIBLE', async (host, dir) => {
    const rootfs = await makeRootfs(join(dir, 'other.img'), 4 * MiB);
    return readFile((await createBundle({ rootfs, out: join(dir, 'other.kubeos'), privateKey: host.keys.privateKey, metadata: { ...metadata, compatible: 'kubeos-arm-board' }, sourceDateEpoch: 1 })).path);
  }],
  ['an older version', 'E_DOWNGRADE', async (host) => readFile((await makeV2(host, { version: '0.9.0', name: 'old' })).path)],
  ['a truncated download', 'E_BUNDLE_TRUNCATED', async (host) => {
    const tar = await readFile((await makeV2(host)).path);
    return tar.subarray(0, Math.floor(tar.length * 0.6));
  }],
];

for (const [title, code, make] of refusals) {
  test(`refused with ${code}, boot environment and active slot untouched: ${title}`, async (t) => {
    const host = await makeHost(t);
    const site = join(host.dir, 'site');
    await mkdir(site, { recursive: true });
    await writeFile(join(site, 'bad.kubeos'), await make(host, host.dir));
    const server = await startUpdateServer(t, site);
    const before = await snapshot(host);
    const error = await t.throwsAsync(upgrade(host.config, { bundle: `${server.url}/bad.kubeos`, reboot: false }));
    t.true(isKubeosError(error, code), `${(error as { code?: string }).code}: ${error?.message}`);
    t.deepEqual(await snapshot(host), before);
  });
}

test('an expired channel index is refused and changes nothing', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  await publishToDir(site, await makeV2(host), host.keys.privateKey, { serial: 1, expires: new Date(Date.now() - 1000), published: new Date(Date.now() - 5000) });
  const server = await startUpdateServer(t, site);
  const before = await snapshot(host);
  const error = await t.throwsAsync(upgrade(host.config, { channel: `${server.url}/channels/stable.json`, reboot: false }));
  t.true(isKubeosError(error, 'E_CHANNEL_EXPIRED'));
  t.deepEqual(await snapshot(host), before);
});

test('a replayed channel index (its serial went backwards) is refused and changes nothing', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  const url = `${(await startUpdateServer(t, site)).url}/channels/stable.json`;
  await publishToDir(site, await makeV2(host, { version: '1.0.0', name: 'same' }), host.keys.privateKey, { serial: 7 });
  t.like(await upgrade(host.config, { channel: url, reboot: false }), { kind: 'up-to-date' });
  await publishToDir(site, await makeV2(host), host.keys.privateKey, { serial: 6 });
  const before = await snapshot(host);
  const error = await t.throwsAsync(upgrade(host.config, { channel: url, reboot: false }));
  t.true(isKubeosError(error, 'E_CHANNEL_ROLLBACK'));
  t.deepEqual(await snapshot(host), before);
});

test('a dropped connection resumes with a Range request and the upgrade completes', async (t) => {
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  const site = join(host.dir, 'site');
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1 });
  const server = await startUpdateServer(t, site);
  server.dropOnce(`bundles/${v2.sha256}.kubeos`, Math.floor(v2.size / 3));
  const result = await upgrade(host.config, { channel: `${server.url}/channels/stable.json`, reboot: false });
  t.like(result, { kind: 'installed', slot: 'B' });
  const ranges = bundleDownloads(server).map((r) => r.range);
  t.is(ranges.length, 2);
  t.is(ranges[0], undefined);
  // it resumes from what arrived: at most the bytes sent before the cut, never from zero
  const resumedAt = Number(/^bytes=(\d+)-$/.exec(ranges[1] ?? '')?.[1]);
  t.true(resumedAt > 0 && resumedAt <= Math.floor(v2.size / 3), `resumed at ${resumedAt}`);
  t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), v2.manifest.payload.uncompressedSha256);
});

test('a second upgrade while one runs fails at once with the lock error naming the holder', async (t) => {
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  let second: unknown;
  const result = await upgrade(host.config, {
    bundle: v2.path,
    reboot: false,
    onStep: (step) => {
      if (step === 'verified-header') second = upgrade(host.config, { bundle: v2.path, reboot: false }).then(() => undefined, (error: unknown) => error);
    },
  });
  t.like(result, { kind: 'installed' });
  const error = await (second as Promise<unknown>);
  t.true(isKubeosError(error, 'E_LOCKED'));
  t.regex((error as Error).message, new RegExp(`pid ${process.pid}`));
});

test('commit after a healthy trial boot makes the new slot good; rollback returns to the old one', async (t) => {
  const host = await makeHost(t);
  await upgrade(host.config, { bundle: (await makeV2(host)).path, reboot: false });
  await bootInto(host, 'B', 'trying', '2.0.0');
  t.like(await commit(host.config), { kind: 'committed', slot: 'B' });
  t.deepEqual(await env(host.bootEnv), { good: 'B', trying: undefined, triesLeft: 0, failed: undefined });
  t.like(await commit(host.config), { kind: 'already-committed' });
  t.like(await status(host.config), { booted: 'B', slots: { A: { state: 'standby', version: '1.0.0' }, B: { state: 'good', version: '2.0.0' } }, lastUpgrade: { result: 'committed' } });
  t.like(await rollback(host.config, { reboot: false }), { slot: 'A', version: '1.0.0' });
  t.deepEqual(await env(host.bootEnv), { good: 'A', trying: undefined, triesLeft: 0, failed: undefined });
});

test('rollback refuses a slot without a committed image', async (t) => {
  const host = await makeHost(t);
  const before = await snapshot(host);
  const error = await t.throwsAsync(rollback(host.config, { reboot: false }));
  t.true(isKubeosError(error, 'E_SLOT'));
  t.deepEqual(await snapshot(host), before);
});

test('status says the last boot fell back when GRUB gave up on the new slot', async (t) => {
  const host = await makeHost(t);
  await upgrade(host.config, { bundle: (await makeV2(host)).path, reboot: false });
  await setBootEnv(host, { good: 'A', trying: undefined, triesLeft: 0, failed: 'B' });
  await bootInto(host, 'A', 'fallback', '1.0.0');
  const s = await status(host.config);
  t.true(s.fellBack);
  t.like(s.slots, { A: { state: 'good' }, B: { state: 'failed', version: '2.0.0' } });
  // commit on the good slot changes nothing
  t.like(await commit(host.config), { kind: 'already-committed', slot: 'A' });
});

test('a channel name is read under the host\'s own image server', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  await publishToDir(site, await makeV2(host), host.keys.privateKey, { serial: 1, channel: 'beta' });
  const server = await startUpdateServer(t, site);
  const result = await upgrade({ ...host.config, updateServer: `${server.url}/` }, { channel: 'beta', reboot: false });
  t.like(result, { kind: 'installed', version: '2.0.0' });
  t.true(server.requests.some((r) => r.path === 'channels/beta.json'));
});

test('a pinned version listed by the signed channel is installed, not the channel\'s newest', async (t) => {
  const host = await makeHost(t);
  const { v2, v3, server } = await serveTwoReleases(t, host);
  const result = await upgrade({ ...host.config, updateServer: server.url }, { channel: 'stable', version: '2.0.0', reboot: false });
  t.like(result, { kind: 'installed', version: '2.0.0', slot: 'B' });
  t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), v2.manifest.payload.uncompressedSha256);
  t.false(server.requests.some((r) => r.path === `bundles/${v3.sha256}.kubeos`), 'the newer bundle was never fetched');
});

test('a version the signed channel does not list is refused before any bundle is fetched or the standby slot touched', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  await publishToDir(site, await makeV2(host), host.keys.privateKey, { serial: 1 });
  const server = await startUpdateServer(t, site);
  const before = await snapshot(host);
  const standby = sha256(await readSlot(host, 'B'));
  const error = await t.throwsAsync(upgrade({ ...host.config, updateServer: server.url }, { channel: 'stable', version: '9.9.9', reboot: false }));
  t.true(isKubeosError(error, 'E_VERSION_NOT_OFFERED'));
  t.like((error as { details?: Record<string, unknown> }).details, { version: '9.9.9', offered: ['2.0.0'] });
  t.false(server.requests.some((r) => r.path.startsWith('bundles/')), 'no bundle fetched');
  t.deepEqual(await snapshot(host), before);
  t.is(sha256(await readSlot(host, 'B')), standby, 'the standby slot is untouched');
});

test('a bundle whose bytes are not the size and sha256 the signed index gives is never made bootable', async (t) => {
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  const other = await makeV2(host, { name: 'other' }); // also 2.0.0 and validly signed, but other bytes
  const site = join(host.dir, 'site');
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1 });
  await writeFile(join(site, `bundles/${v2.sha256}.kubeos`), await readFile(other.path)); // the server swapped the file
  const server = await startUpdateServer(t, site);
  const before = await snapshot(host);
  const error = await t.throwsAsync(upgrade({ ...host.config, updateServer: server.url }, { channel: 'stable', version: '2.0.0', reboot: false }));
  t.true(isKubeosError(error, 'E_BUNDLE_INVALID'), String(error));
  t.regex((error as Error).message, /the signed channel index says \d+ bytes, sha256/);
  t.is((await snapshot(host)).slotA, before.slotA);
  t.deepEqual(await env(host.bootEnv), { good: 'A', trying: undefined, triesLeft: 0, failed: undefined });
});

test('a local bundle whose zstd checksum was flipped is refused as bundle verify refuses it, nothing made bootable', async (t) => {
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  const bytes = await readFile(v2.path);
  const payload = member(bytes, 'payload.img.zst');
  // the frame's last 4 bytes are its xxhash64 checksum; the decompressed image is unchanged
  const damaged = join(host.dir, 'flipped.kubeos');
  await writeFile(damaged, flipByte(bytes, payload.dataOffset + payload.size - 1));
  const verified = await t.throwsAsync(verifyBundleFile(damaged, { trustedKeys: host.keys.trusted }));
  t.true(isKubeosError(verified, 'E_HASH_MISMATCH'), String(verified));
  const before = await snapshot(host);
  const error = await t.throwsAsync(upgrade(host.config, { bundle: damaged, reboot: false }));
  t.true(isKubeosError(error, 'E_HASH_MISMATCH'), String(error));
  t.is((await snapshot(host)).slotA, before.slotA);
  t.deepEqual(await env(host.bootEnv), { good: 'A', trying: undefined, triesLeft: 0, failed: undefined });
});

test('an agent config from before channel names (a channel URL) still works', async (t) => {
  const host = await makeHost(t, { channel: 'https://images.example/kubeos/channels/stable.json' });
  t.is(host.config.updateServer, 'https://images.example/kubeos/');
  t.is(host.config.channel, 'stable');
});

test('an agent config whose channel URL is not an index is refused naming the file and the fix', async (t) => {
  const error = await t.throwsAsync(makeHost(t, { channel: 'https://images.example/kubeos/stable' }));
  t.true(isKubeosError(error, 'E_USAGE'));
  t.regex((error as Error).message, /agent config .*agent\.json: channel "https:\/\/images\.example\/kubeos\/stable" is a URL that does not end in channels\/NAME\.json/);
});

test('another channel\'s index served under this channel\'s name is refused, and its serial is not kept', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  await publishToDir(site, await makeV2(host), host.keys.privateKey, { serial: 9, channel: 'beta' });
  await mkdir(join(site, 'channels'), { recursive: true });
  await writeFile(join(site, 'channels/stable.json'), await readFile(join(site, 'channels/beta.json')));
  const server = await startUpdateServer(t, site);
  const before = await snapshot(host);
  const error = await t.throwsAsync(upgrade({ ...host.config, updateServer: server.url }, { channel: 'stable', reboot: false }));
  t.true(isKubeosError(error, 'E_CHANNEL_INVALID'), String(error));
  t.like((error as { details?: Record<string, unknown> }).details, { expected: 'stable', actual: 'beta' });
  t.deepEqual(await snapshot(host), before);
  const state = JSON.parse(await readFile(join(host.config.stateDir, 'state.json'), 'utf8').catch(() => '{}')) as { channelSerials?: Record<string, number> };
  t.deepEqual(state.channelSerials ?? {}, {}, 'no serial stored');
});

test('a channel\'s serial is kept per channel name, so another spelling of its URL cannot replay an old index', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  const v2 = await makeV2(host);
  await publishToDir(site, v2, host.keys.privateKey, { serial: 5 });
  const server = await startUpdateServer(t, site);
  await upgrade(host.config, { channel: `${server.url}/channels/stable.json`, reboot: false });
  await publishToDir(site, v2, host.keys.privateKey, { serial: 3 });
  const error = await t.throwsAsync(upgrade(host.config, { channel: `${server.url}/x/../channels/stable.json`, reboot: false }));
  t.true(isKubeosError(error, 'E_CHANNEL_ROLLBACK'), String(error));
});

test('a channel index sent without Content-Length is refused once it passes 1 MiB, not buffered', async (t) => {
  const host = await makeHost(t);
  const { createServer } = await import('node:http');
  let sent = 0;
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'application/json' }); // chunked: no Content-Length
    const chunk = Buffer.alloc(64 * 1024, 0x20);
    const pump = () => {
      // bounded, so a broken client cannot make the test run forever: 64 MiB at most
      while (sent < 64 * MiB && res.write(chunk)) sent += chunk.length;
      if (sent >= 64 * MiB) res.end();
    };
    res.on('drain', pump);
    res.on('close', () => res.off('drain', pump));
    pump();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  const url = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
  const error = await t.throwsAsync(upgrade({ ...host.config, updateServer: url }, { channel: 'stable', reboot: false }));
  t.true(isKubeosError(error, 'E_CHANNEL_INVALID'), String(error));
  t.like((error as { details?: Record<string, unknown> }).details, { limit: 1024 * 1024 });
  t.true(sent < 16 * MiB, `the agent stopped reading early (${sent} bytes sent)`);
});

test('a lock whose holder file is empty still refuses a second upgrade with E_LOCKED', async (t) => {
  const host = await makeHost(t);
  const v2 = await makeV2(host);
  let second: unknown;
  await upgrade(host.config, {
    bundle: v2.path,
    reboot: false,
    onStep: (step) => {
      if (step !== 'verified-header') return;
      // a holder killed while it wrote its name leaves the file empty
      second = writeFile(join(host.config.runDir, 'agent.holder.json'), '')
        .then(() => upgrade(host.config, { bundle: v2.path, reboot: false }))
        .then(() => undefined, (error: unknown) => error);
    },
  });
  const error = await (second as Promise<unknown>);
  t.true(isKubeosError(error, 'E_LOCKED'), String(error));
  t.is((error as { details?: { holder?: unknown } }).details?.holder, undefined);
});

/** A server that serves `site`, but stalls: 'index' never answers at all, 'body' sends half of a bundle and then nothing. */
async function stallingServer(t: Parameters<typeof makeHost>[0], site: string, stall: 'index' | 'body'): Promise<string> {
  const { createServer } = await import('node:http');
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').replace(/^\/+/, '');
    if (stall === 'index') return; // accepted, never answered
    void readFile(join(site, path)).then((data) => {
      if (!path.startsWith('bundles/')) return res.end(data);
      const from = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
      res.writeHead(from > 0 ? 206 : 200, { 'content-length': String(data.length - from), etag: '"x"', 'accept-ranges': 'bytes', ...(from > 0 ? { 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` } : {}) });
      if (from === 0) res.write(data.subarray(0, data.length >> 1)); // then silence, connection open
    }, () => res.writeHead(404).end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  return `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
}

const stalls = test.macro(async (t, stall: 'index' | 'body', code: ErrorCode) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  await publishToDir(site, await makeV2(host), host.keys.privateKey, { serial: 1 });
  const url = await stallingServer(t, site, stall);
  const before = await snapshot(host);
  const config = { ...host.config, updateServer: url, networkTimeoutSeconds: 1 };
  const error = await t.throwsAsync(upgrade(config, { channel: 'stable', reboot: false }));
  t.true(isKubeosError(error, code), String(error));
  t.deepEqual((await snapshot(host)).env, before.env, 'the boot environment is untouched');
  // the lock was released: the next upgrade gets as far as the network again
  const again = await t.throwsAsync(upgrade(config, { channel: 'stable', reboot: false }));
  t.true(isKubeosError(again, code), String(again));
});

test('a channel server that never answers fails the upgrade with E_FETCH within the network timeout and frees the lock', stalls, 'index', 'E_FETCH');
test('a bundle download that stalls half way is retried, then fails with E_FETCH and frees the lock', stalls, 'body', 'E_FETCH');

test('a bundle followed by endless data is cut off at the signed size and refused, nothing made bootable', async (t) => {
  const host = await makeHost(t);
  const site = join(host.dir, 'site');
  const v2 = await makeV2(host);
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1 });
  const { createServer } = await import('node:http');
  let sent = 0;
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').replace(/^\/+/, '');
    void readFile(join(site, path)).then((data) => {
      if (!path.startsWith('bundles/')) return res.end(data);
      res.writeHead(200); // no Content-Length: the body just goes on
      res.write(data);
      const zeros = Buffer.alloc(1 << 20);
      const pump = () => {
        while (sent < 256 * MiB && res.write(zeros)) sent += zeros.length; // bounded: a broken agent cannot hang the test
        if (sent >= 256 * MiB) res.end();
      };
      res.on('drain', pump);
      pump();
    }, () => res.writeHead(404).end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  const before = await snapshot(host);
  const error = await t.throwsAsync(upgrade({ ...host.config, updateServer: `http://127.0.0.1:${(server.address() as { port: number }).port}/` }, { channel: 'stable', reboot: false }));
  t.true(isKubeosError(error, 'E_BUNDLE_INVALID'), String(error));
  t.like((error as { details?: Record<string, unknown> }).details, { expected: v2.size });
  t.deepEqual((await snapshot(host)).env, before.env);
  t.true(sent < 128 * MiB, `the agent stopped reading (${sent} bytes of garbage sent)`);
});
