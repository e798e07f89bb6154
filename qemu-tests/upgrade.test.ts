/**
 * The whole update path on a real boot chain: OVMF → GRUB (boot counting) → Linux → the agent in
 * the guest, fetching from an update server on the host's 127.0.0.1 through QEMU's user network
 * (restrict=on: the guest reaches only that server, as 10.0.2.100:80).
 *   v1 in A → upgrade to v2 → B tried, committed, stays → v3 into A → an unhealthy v4 is tried and
 *   abandoned by GRUB → QEMU killed mid-download → the old slot boots with its data.
 * The tests share one disk and run in order.
 */
import anyTest, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import { createBundle, type CreatedBundle } from '../builder/bundle/create-bundle.js';
import type { BuildResult } from '../builder/build/build-image.js';
import { QemuVm } from '../builder/qemu/start-qemu.js';
import { makeKeys, type TestKeys } from '../test/helpers/bundle-fixtures.js';
import { makeTempDir, removeFileTempDirs } from '../test/helpers/temp-dir.js';
import { publishToDir, startUpdateServer, type UpdateServer } from '../test/helpers/update-server.js';
import { canRun, testNeeding } from '../test/helpers/tools.js';
import { bootTimeoutMs, buildTestImage, copyDisk } from './build-fixture.js';

const tools = ['qemu-system-x86_64', 'mke2fs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox', 'zstd'] as const;
const test = await testNeeding(tools);
const runnable = await canRun(tools);
const upgradeTimeoutMs = 480_000;
const channelUrl = 'http://10.0.2.100/channels/stable.json';
const nodeConfig = { sysctl: { 'vm.swappiness': 13 }, files: [{ path: '/etc/containerd/config.toml', content: 'version = 2\n', mode: '0644' }] };

interface World {
  dir: string;
  keys: TestKeys;
  v1: BuildResult;
  disk: string;
  bundles: Record<'v2' | 'v3' | 'v4', CreatedBundle>;
  site: string;
  server: UpdateServer;
  serial: number;
  vm?: QemuVm;
  boots: number;
}

let world: World | undefined;

async function bundleOf(build: BuildResult, keys: TestKeys, dir: string, name: string): Promise<CreatedBundle> {
  return createBundle({
    rootfs: join(build.out, 'rootfs.img'),
    out: join(dir, `${name}.kubeos`),
    privateKey: keys.privateKey,
    metadata: { os: 'kubeos', version: build.image.version, arch: build.image.arch, compatible: build.image.compatible, kernelVersion: build.image.kernelVersion },
    sourceDateEpoch: 1_700_000_000,
  });
}

// hooks have no t.teardown: collect the helpers' clean-ups and run them after all tests
const cleanups: (() => Promise<void> | void)[] = [];
const hookContext = { teardown: (fn: () => Promise<void> | void) => cleanups.push(fn), log: () => {} } as unknown as ExecutionContext;

anyTest.before(async () => {
  if (!runnable) return;
  const t = hookContext;
  const dir = await makeTempDir(t, 'kubeos-qemu-upgrade-');
  const keys = await makeKeys(dir);
  const trustedKeys = [keys.publicPath];
  const v1 = await buildTestImage({ version: '1.0.0', trustedKeys });
  const v2 = await buildTestImage({ version: '2.0.0', trustedKeys });
  const v3 = await buildTestImage({ version: '3.0.0', trustedKeys });
  const v4 = await buildTestImage({ image: 'qemu-tests/images/unhealthy', version: '4.0.0', trustedKeys });
  const site = join(dir, 'site');
  world = {
    dir, keys, v1, site,
    disk: await copyDisk(v1, 'fleet-host'),
    bundles: { v2: await bundleOf(v2, keys, dir, 'v2'), v3: await bundleOf(v3, keys, dir, 'v3'), v4: await bundleOf(v4, keys, dir, 'v4') },
    server: await startUpdateServer(t, site),
    serial: 0,
    boots: 0,
  };
});

function current(): World {
  if (world === undefined) throw new Error('setup did not run');
  return world;
}

async function boot(w: World): Promise<QemuVm> {
  await w.vm?.stop();
  w.boots++;
  const port = Number(new URL(w.server.url).port);
  w.vm = await QemuVm.start({
    disk: w.disk,
    log: join(w.dir, `boot-${w.boots}`, 'console.log'),
    memoryMiB: 768,
    forwards: [{ guestAddress: '10.0.2.100', guestPort: 80, hostPort: port }],
  });
  return w.vm;
}

async function publish(w: World, bundle: CreatedBundle): Promise<void> {
  w.serial++;
  await publishToDir(w.site, bundle, w.keys.privateKey, { serial: w.serial });
}

/** Runs a shell command on the console and returns the lines it printed before its exit code. */
async function shell(vm: QemuVm, command: string, timeoutMs = 120_000): Promise<string> {
  const marker = `done-${Math.random().toString(36).slice(2, 8)}`;
  vm.send(`${command}; echo "${marker}=$?"`);
  const line = await vm.waitFor(new RegExp(`^${marker}=\\d+$`), timeoutMs);
  return line.slice(marker.length + 1);
}

anyTest.after.always(async () => {
  await world?.vm?.stop();
  for (const cleanup of cleanups.reverse()) await cleanup();
});

test.serial('v1 boots from slot A and the agent in the guest upgrades it to v2 in slot B', async (t) => {
  const w = current();
  await publish(w, w.bundles.v2);
  const vm = await boot(w);
  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=1\.0\.0 slot=A boot=good/);
  await vm.waitFor(/^kubeos: ready$/, 60_000);
  t.is(await shell(vm, 'echo written-under-v1 > /persist/note && sync'), '0');
  // node OS configuration through the agent: a real sysctl and a containerd config, kept across the upgrade
  vm.send(`echo '${JSON.stringify(nodeConfig)}' > /tmp/node.json`);
  t.is(await shell(vm, 'kubeos agent config apply /tmp/node.json'), '0');
  vm.send('echo "swappiness=$(cat /proc/sys/vm/swappiness)"');
  t.is(await vm.waitFor(/^swappiness=/, 30_000), 'swappiness=13');
  vm.send(`kubeos agent upgrade --channel ${channelUrl}`);
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, upgradeTimeoutMs), /booting slot B \(trying\)/);
  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=2\.0\.0 slot=B boot=trying root=ro persist=rw/);
  t.is(await vm.waitFor(/^kubeos: committed slot/, 120_000), 'kubeos: committed slot B');
  await vm.waitFor(/^kubeos: ready$/, 60_000);
  vm.send('echo "note=$(cat /persist/note)"');
  t.is(await vm.waitFor(/^note=/, 30_000), 'note=written-under-v1');
  vm.send('echo "swappiness=$(cat /proc/sys/vm/swappiness) containerd=$(cat /etc/containerd/config.toml)"');
  t.is(await vm.waitFor(/^swappiness=/, 30_000), 'swappiness=13 containerd=version = 2');
  vm.send('kubeos agent status --json | tr -d " \\n"; echo');
  const status = JSON.parse(await vm.waitFor(/^\{"version"/, 120_000)) as { booted: string; slots: Record<string, { state: string; version?: string }> };
  t.like(status, { booted: 'B', slots: { A: { state: 'standby', version: '1.0.0' }, B: { state: 'good', version: '2.0.0' } } });
});

test.serial('the committed slot B keeps booting, and v3 goes into slot A', async (t) => {
  const w = current();
  const vm = w.vm as QemuVm;
  vm.send('reboot');
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, bootTimeoutMs), /booting slot B \(good\)/);
  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=2\.0\.0 slot=B boot=good/);
  await vm.waitFor(/^kubeos: ready$/, 60_000);
  await publish(w, w.bundles.v3);
  vm.send(`kubeos agent upgrade --channel ${channelUrl}`);
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, upgradeTimeoutMs), /booting slot A \(trying\)/);
  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=3\.0\.0 slot=A boot=trying/);
  t.is(await vm.waitFor(/^kubeos: committed slot/, 120_000), 'kubeos: committed slot A');
  await vm.waitFor(/^kubeos: ready$/, 60_000);
});

test.serial('an update that never comes up healthy is tried, abandoned by GRUB, and status says it fell back', async (t) => {
  const w = current();
  const vm = w.vm as QemuVm;
  await publish(w, w.bundles.v4);
  vm.send(`kubeos agent upgrade --channel ${channelUrl}`);
  for (let attempt = 1; attempt <= 3; attempt++) {
    t.regex(await vm.waitFor(/kubeos-grub: booting slot/, attempt === 1 ? upgradeTimeoutMs : bootTimeoutMs), /booting slot B \(trying\)/, `try ${attempt}`);
    t.regex(await vm.waitFor(/^kubeos: health check .* failed/, bootTimeoutMs), /90-always-fail/);
  }
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, bootTimeoutMs), /booting slot A \(fallback\)/);
  t.regex(await vm.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=3\.0\.0 slot=A boot=fallback/);
  await vm.waitFor(/^kubeos: ready$/, 60_000);
  vm.send('kubeos agent status --json | tr -d " \\n"; echo');
  const status = JSON.parse(await vm.waitFor(/^\{"version"/, 120_000)) as { fellBack: boolean; booted: string; slots: Record<string, { state: string; version?: string }> };
  t.true(status.fellBack);
  t.like(status, { booted: 'A', slots: { A: { state: 'good', version: '3.0.0' }, B: { state: 'failed', version: '4.0.0' } } });
});

test.serial('QEMU killed in the middle of an upgrade: the next boot is the old slot with its data', async (t) => {
  const w = current();
  const vm = w.vm as QemuVm;
  await publish(w, w.bundles.v2);
  const half = Math.floor(w.bundles.v2.size / 2);
  const killed = new Promise<void>((resolve) => {
    w.server.onBundleBytes = (sent) => {
      if (sent < half) return;
      w.server.onBundleBytes = undefined;
      void vm.stop().then(resolve);
    };
  });
  vm.send(`kubeos agent upgrade --allow-downgrade --channel ${channelUrl}`);
  await killed;
  const next = await boot(w);
  t.regex(await next.waitFor(/kubeos-grub: booting slot/, bootTimeoutMs), /booting slot A \(good\)/);
  t.regex(await next.waitFor(/^kubeos: version=/, bootTimeoutMs), /version=3\.0\.0 slot=A boot=good/);
  await next.waitFor(/^kubeos: ready$/, 60_000);
  next.send('echo "note=$(cat /persist/note)"');
  t.is(await next.waitFor(/^note=/, 30_000), 'note=written-under-v1');
});

anyTest.after.always('remove the temporary directories', removeFileTempDirs);
