/**
 * images/debian end to end: a Debian 12 root from mmdebstrap (cached between runs in the kubeos
 * cache, never in the repo) boots to multi-user under systemd, and the agent in the guest
 * upgrades it A→B from an update server on the host (QEMU user network, as in upgrade.test.ts);
 * kubeos-boot.service commits the trial boot once the system is up.
 */
import anyTest, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import { buildImage, type BuildResult } from '../builder/build/build-image.js';
import { createBundle } from '../builder/bundle/create-bundle.js';
import { QemuVm } from '../builder/qemu/start-qemu.js';
import { makeKeys } from '../test/helpers/bundle-fixtures.js';
import { canRun, testNeeding } from '../test/helpers/tools.js';
import { publishToDir, startUpdateServer, type UpdateServer } from '../test/helpers/update-server.js';
import { copyDisk } from './build-fixture.js';
import { makeFileTempDir, removeFileTempDirs } from '../test/helpers/temp-dir.js';

const tools = ['qemu-system-x86_64', 'mmdebstrap', 'mke2fs', 'debugfs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox', 'zstd', 'depmod'] as const;
const test = await testNeeding(tools);
const runnable = await canRun(tools);
const bootMs = 300_000;
const upgradeMs = 900_000;
const channelUrl = 'http://10.0.2.100/channels/stable.json';

const cleanups: (() => Promise<void> | void)[] = [];
const hookContext = { teardown: (fn: () => Promise<void> | void) => cleanups.push(fn), log: () => {} } as unknown as ExecutionContext;
let world: { dir: string; v1: BuildResult; server: UpdateServer; vm?: QemuVm } | undefined;

anyTest.before(async () => {
  if (!runnable) return;
  const dir = await makeFileTempDir('kubeos-qemu-debian-');
  const keys = await makeKeys(dir);
  const build = (version: string) => buildImage({ image: 'images/debian', out: join(dir, version), version, trustedKeys: [keys.publicPath], sourceDateEpoch: 1_700_000_000 });
  const v1 = await build('1.0.0');
  const v2 = await build('2.0.0');
  const bundle = await createBundle({
    rootfs: join(v2.out, 'rootfs.img'), out: join(dir, 'v2.kubeos'), privateKey: keys.privateKey, sourceDateEpoch: 1_700_000_000,
    metadata: { os: 'kubeos', version: v2.image.version, arch: v2.image.arch, compatible: v2.image.compatible, kernelVersion: v2.image.kernelVersion },
  });
  const site = join(dir, 'site');
  await publishToDir(site, bundle, keys.privateKey, { serial: 1 });
  world = { dir, v1, server: await startUpdateServer(hookContext, site) };
});

anyTest.after.always(async () => {
  await world?.vm?.stop();
  for (const cleanup of cleanups.reverse()) await cleanup();
});

test.serial('images/debian boots to multi-user with systemd, containerd and a DHCP lease', async (t) => {
  const w = world;
  if (w === undefined) throw new Error('setup did not run');
  const port = Number(new URL(w.server.url).port);
  w.vm = await QemuVm.start({
    disk: await copyDisk(w.v1, 'debian-host'), log: join(w.dir, 'boot-1', 'console.log'), memoryMiB: 1024,
    forwards: [{ guestAddress: '10.0.2.100', guestPort: 80, hostPort: port }],
  });
  const vm = w.vm;
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, bootMs), /booting slot A \(good\)/);
  t.regex(await vm.waitFor(/kubeos: version=/, bootMs), /kubeos: version=1\.0\.0 slot=A boot=good root=ro persist=rw$/);
  await vm.waitFor(/kubeos: ready$/, 60_000);
  // kubeos-boot.service runs after multi-user.target: by now the target was reached
  const answer = await ask(vm, 'echo "target=$(systemctl is-active multi-user.target) containerd=$(systemctl is-active containerd) addr=$(ip -4 -o addr show scope global | wc -l)"', /^target=\w/, 120_000);
  t.is(answer, 'target=active containerd=active addr=1');
});

/**
 * Types a command on the serial console and waits for its answer. Typed input waits in the tty for
 * the shell, but agetty flushes the tty when it starts (around when kubeos-boot.service finishes),
 * swallowing what came before: the command is typed again every 15 s until it is answered.
 */
async function ask(vm: QemuVm, command: string, answer: RegExp, timeoutMs: number): Promise<string> {
  const reply = vm.waitFor(answer, timeoutMs);
  const again = setInterval(() => vm.send(command), 15_000);
  try {
    vm.send(command);
    return await reply;
  } finally {
    clearInterval(again);
  }
}

test.serial('the agent in the Debian guest upgrades it to v2 in slot B, which commits once it is up', async (t) => {
  const vm = world?.vm;
  if (vm === undefined) throw new Error('the first boot did not run');
  vm.send(`kubeos agent upgrade --channel ${channelUrl}`);
  t.regex(await vm.waitFor(/kubeos-grub: booting slot/, upgradeMs), /booting slot B \(trying\)/);
  t.regex(await vm.waitFor(/kubeos: version=/, bootMs), /kubeos: version=2\.0\.0 slot=B boot=trying root=ro persist=rw$/);
  t.regex(await vm.waitFor(/kubeos: committed slot/, 120_000), /kubeos: committed slot B$/);
  await vm.waitFor(/kubeos: ready$/, 60_000);
  vm.send('kubeos agent status --json | tr -d " \\n"; echo');
  const status = JSON.parse(await vm.waitFor(/^\{"version"/, 120_000)) as { booted: string };
  t.like(status, { booted: 'B', slots: { A: { state: 'standby', version: '1.0.0' }, B: { state: 'good', version: '2.0.0' } } });
});

anyTest.after.always('remove the temporary directories', removeFileTempDirs);
