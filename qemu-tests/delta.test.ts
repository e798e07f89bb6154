/**
 * A delta upgrade on a real boot chain (issue 13): v1 and v2 are the small test image with one
 * file of 1 MiB of incompressible bytes changed, and nothing else. The agent in the guest installs
 * v2 from the update server on the host (bundles/ and chunks/, as kubeos publish lays out a bucket)
 * by delta from its booted slot A, then v2 boots from slot B, is committed, and holds the new file.
 * The agent's report and the server's counts both show the delta: a few chunk requests, and the
 * bundle's body stopped after its manifest.
 */
import anyTest, { type ExecutionContext } from 'ava';
import { createCipheriv, createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createBundle, type CreatedBundle } from '../builder/bundle/create-bundle.js';
import type { BuildResult } from '../builder/build/build-image.js';
import { QemuVm } from '../builder/qemu/start-qemu.js';
import { makeKeys, member, type TestKeys } from '../test/helpers/bundle-fixtures.js';
import { makeFileTempDir, makeTempDir, removeFileTempDirs } from '../test/helpers/temp-dir.js';
import { publishToDir, startUpdateServer, type UpdateServer } from '../test/helpers/update-server.js';
import { canRun, testNeeding } from '../test/helpers/tools.js';
import { bootTimeoutMs, buildTestImage, copyDisk, writeOverlayImage } from './build-fixture.js';

const tools = ['qemu-system-x86_64', 'mke2fs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox', 'zstd'] as const;
const test = await testNeeding(tools);
const runnable = await canRun(tools);
const upgradeTimeoutMs = 480_000;
const channelUrl = 'http://10.0.2.100/channels/stable.json';
const changedPath = '/usr/share/kubeos-test/changed.bin';
const changedBytes = 1 << 20;

interface World {
  dir: string;
  keys: TestKeys;
  disk: string;
  bundle: CreatedBundle;
  /** sha256 of v2's changed file. */
  changedSha256: string;
  server: UpdateServer;
}

let world: World | undefined;

/** Bytes that do not compress (an AES-CTR key stream) and are the same on every run for the same seed. */
function incompressible(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(seed).digest();
  return createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16)).update(Buffer.alloc(length));
}

async function buildVersion(version: string, content: Buffer, trustedKeys: string[]): Promise<BuildResult> {
  const image = await writeOverlayImage(await makeFileTempDir(`kubeos-delta-image-${version}-`), { [changedPath]: content });
  return buildTestImage({ image, version, trustedKeys });
}

// hooks have no t.teardown: collect the helpers' clean-ups and run them after all tests
const cleanups: (() => Promise<void> | void)[] = [];
const hookContext = { teardown: (fn: () => Promise<void> | void) => cleanups.push(fn), log: () => {} } as unknown as ExecutionContext;

anyTest.before(async () => {
  if (!runnable) return;
  const dir = await makeTempDir(hookContext, 'kubeos-qemu-delta-');
  const keys = await makeKeys(dir);
  const v2Content = incompressible('v2', changedBytes);
  // the same path and size in both: the root filesystems differ in that file's blocks alone
  const v1 = await buildVersion('1.0.0', incompressible('v1', changedBytes), [keys.publicPath]);
  const v2 = await buildVersion('2.0.0', v2Content, [keys.publicPath]);
  const bundle = await createBundle({
    rootfs: join(v2.out, 'rootfs.img'),
    out: join(dir, 'v2.kubeos'),
    privateKey: keys.privateKey,
    metadata: { os: 'kubeos', version: v2.image.version, arch: v2.image.arch, compatible: v2.image.compatible, kernelVersion: v2.image.kernelVersion },
    sourceDateEpoch: 1_700_000_000,
  });
  const site = join(dir, 'site');
  await publishToDir(site, bundle, keys.privateKey, { serial: 1, chunks: true });
  world = {
    dir, keys, bundle,
    disk: await copyDisk(v1, 'delta-host'),
    changedSha256: createHash('sha256').update(v2Content).digest('hex'),
    server: await startUpdateServer(hookContext, site),
  };
});

let vm: QemuVm | undefined;

anyTest.after.always(async () => {
  await vm?.stop();
  for (const cleanup of cleanups.reverse()) await cleanup();
});

function current(): World {
  if (world === undefined) throw new Error('setup did not run');
  return world;
}

test.serial('v1 in slot A upgrades to v2 by delta, fetching a few chunks and not the bundle; v2 boots from slot B and commits', async (t) => {
  const w = current();
  const index = w.bundle.index;
  if (index === undefined) throw new Error('the v2 bundle has no chunk index');
  vm = await QemuVm.start({
    disk: w.disk,
    log: join(w.dir, 'boot', 'console.log'),
    memoryMiB: 768,
    forwards: [{ guestAddress: '10.0.2.100', guestPort: 80, hostPort: Number(new URL(w.server.url).port) }],
  });
  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=1\.0\.0 slot=A boot=good/);
  await vm.waitFor(/^kubeos: ready$/, 60_000);

  vm.send(`kubeos agent upgrade --channel ${channelUrl}`);
  // the agent's own account, printed before it reboots: what it received, and what it copied from slot A
  const report = await vm.waitFor(/^ {2}(delta|full bundle):/, upgradeTimeoutMs);
  t.log(report.trim());
  const agent = /^ {2}delta: fetched (\d+) bytes \((\d+) chunks\), reused (\d+) bytes \((\d+) chunks\)/.exec(report);
  if (agent === null) throw new Error(`the agent did not install by delta: ${report}`);
  const [fetchedBytes, fetchedChunks, , reusedChunks] = agent.slice(1).map(Number) as [number, number, number, number];
  t.is(fetchedChunks + reusedChunks, index.chunks.length, 'every chunk of the index was fetched or reused');
  t.true(fetchedBytes < w.bundle.size / 10, `the agent received ${fetchedBytes} bytes for a ${w.bundle.size}-byte bundle`);
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, bootTimeoutMs), /booting slot B \(trying\)/);

  // the server's side: some chunks, far fewer than the index holds, and the bundle's body cut off
  const chunkRequests = w.server.requests.filter((r) => r.path.startsWith('chunks/')).length;
  const chunkBytes = w.server.bodyBytes['chunks'] ?? 0;
  const bundleBytes = w.server.bodyBytes['bundles'] ?? 0;
  t.log(`server: ${chunkRequests} chunk requests (${chunkBytes} bytes) for an index of ${index.chunks.length}; ${bundleBytes} bytes of the ${w.bundle.size}-byte bundle written`);
  t.true(chunkRequests >= 2 && chunkRequests < index.chunks.length / 10, `${chunkRequests} chunk requests for an index of ${index.chunks.length}`);
  // runs of the missing chunks by Range requests into the release's pack, fewer than the chunks
  const packReads = w.server.requests.filter((r) => r.path.startsWith('chunks/packs/') && r.path.endsWith('.pack'));
  t.true(packReads.length >= 1 && packReads.length < fetchedChunks && packReads.every((r) => /^bytes=\d+-\d+$/.test(r.range ?? '')), `${packReads.length} ranged reads of the pack for ${fetchedChunks} chunks`);
  // the changed file, as zstd frames of incompressible chunks, and the chunks around it
  t.true(chunkBytes >= changedBytes && chunkBytes < 4 * changedBytes, `${chunkBytes} bytes of chunks for a ${changedBytes}-byte change`);
  // the bundle's header only, by Range requests: the server never starts the whole body
  const headerEnd = member(await readFile(w.bundle.path), 'payload.img.zst').dataOffset;
  t.true(w.server.requests.filter((r) => r.path.startsWith('bundles/')).every((r) => /^bytes=\d+-\d+$/.test(r.range ?? '')), 'only ranged reads of the bundle');
  t.true(bundleBytes >= headerEnd && bundleBytes <= Math.max(headerEnd + 8192, 65536), `${bundleBytes} bytes of a ${w.bundle.size}-byte bundle written for a ${headerEnd}-byte header`);

  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=2\.0\.0 slot=B boot=trying/);
  t.is(await vm.waitFor(/^kubeos: committed slot/, 120_000), 'kubeos: committed slot B');
  await vm.waitFor(/^kubeos: ready$/, 60_000);
  vm.send(`echo "changed=$(sha256sum ${changedPath} | cut -d ' ' -f 1)"`);
  t.is(await vm.waitFor(/^changed=/, 60_000), `changed=${w.changedSha256}`);
  vm.send('kubeos agent status --json | tr -d " \\n"; echo');
  const status = JSON.parse(await vm.waitFor(/^\{"version"/, 120_000)) as { booted: string; version: string; slots: Record<string, { state: string; version?: string }> };
  t.like(status, { booted: 'B', version: '2.0.0', slots: { A: { state: 'standby', version: '1.0.0' }, B: { state: 'good', version: '2.0.0' } } });
});

anyTest.after.always('remove the temporary directories', removeFileTempDirs);
