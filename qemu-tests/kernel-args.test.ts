/**
 * Kernel arguments through `kubeos agent config` on a real boot chain: new arguments are tried by
 * GRUB (kubeos_args_try, counted down before each boot), committed by the boot whose health checks
 * pass, and kept; arguments that break the boot are tried bootTries times, then GRUB boots the
 * committed ones again and the agent reports the generation rolled back. The tests share one disk
 * and run in order.
 */
import anyTest, { type ExecutionContext } from 'ava';
import { join } from 'node:path';
import type { BuildResult } from '../builder/build/build-image.js';
import { QemuVm } from '../builder/qemu/start-qemu.js';
import { makeFileTempDir, removeFileTempDirs } from '../test/helpers/temp-dir.js';
import { canRun, testNeeding } from '../test/helpers/tools.js';
import { bootTimeoutMs, buildTestImage, copyDisk } from './build-fixture.js';

const tools = ['qemu-system-x86_64', 'mke2fs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox', 'zstd'] as const;
const test = await testNeeding(tools);
const runnable = await canRun(tools);

let vm: QemuVm | undefined;
let build: BuildResult | undefined;

anyTest.before(async () => {
  if (!runnable) return;
  build = await buildTestImage({ version: '1.0.0' });
  const dir = await makeFileTempDir('kubeos-qemu-args-');
  vm = await QemuVm.start({ disk: await copyDisk(build, 'args'), log: join(dir, 'console.log'), memoryMiB: 640 });
});

anyTest.after.always(async () => {
  await vm?.stop();
});
anyTest.after.always('remove the temporary directories', removeFileTempDirs);

function guest(): QemuVm {
  if (vm === undefined) throw new Error('setup did not run');
  return vm;
}

/** Runs a shell command on the console; resolves with the first line it prints that starts with `tag=`. */
async function ask(v: QemuVm, tag: string, command: string, timeoutMs = 60_000): Promise<string> {
  v.send(`echo "${tag}=$(${command})"`);
  const line = await v.waitFor(new RegExp(`^${tag}=`), timeoutMs);
  return line.slice(tag.length + 1);
}

async function applyArgs(v: QemuVm, add: string[]): Promise<void> {
  v.send(`echo '${JSON.stringify({ sysctl: { 'vm.swappiness': 21 }, kernelArgs: { add } })}' > /tmp/args.json && kubeos agent config apply /tmp/args.json`);
}

test.serial('new kernel arguments are tried on the next boot, committed once its health checks pass, and kept', async (t: ExecutionContext) => {
  const v = guest();
  await v.waitFor(/^kubeos: ready$/, bootTimeoutMs);
  await applyArgs(v, ['mitigations=off']);
  t.regex(await v.waitFor(/kubeos-grub: kernel arguments/, bootTimeoutMs), /\(trying\): mitigations=off/);
  t.is(await v.waitFor(/^kubeos: committed the kernel arguments$/, bootTimeoutMs), 'kubeos: committed the kernel arguments');
  await v.waitFor(/^kubeos: ready$/, 60_000);
  t.regex(await ask(v, 'cmdline', 'cat /proc/cmdline'), / mitigations=off .*kubeos\.config=trying/);
  t.is(await ask(v, 'swappiness', 'cat /proc/sys/vm/swappiness'), '21');
  v.send('reboot');
  t.regex(await v.waitFor(/kubeos-grub: kernel arguments/, bootTimeoutMs), /\(good\): mitigations=off$/);
  await v.waitFor(/^kubeos: ready$/, bootTimeoutMs);
  t.regex(await ask(v, 'cmdline', 'cat /proc/cmdline'), / mitigations=off .*kubeos\.config=good/);
  t.is(await ask(v, 'swappiness', 'cat /proc/sys/vm/swappiness'), '21', 'the sysctl is set again at boot');
});

test.serial('a kernel argument that breaks the boot is tried bootTries times, then GRUB boots the committed ones and the agent reports the rollback', async (t: ExecutionContext) => {
  const v = guest();
  // with rdinit pointing nowhere the kernel finds no init in the initramfs and panics (panic=5 reboots)
  await applyArgs(v, ['mitigations=off', 'rdinit=/nonexistent']);
  for (let attempt = 1; attempt <= 3; attempt++) {
    t.regex(await v.waitFor(/kubeos-grub: kernel arguments/, bootTimeoutMs), /\(trying\): mitigations=off rdinit=\/nonexistent$/, `try ${attempt}`);
  }
  t.regex(await v.waitFor(/kubeos-grub: kernel arguments/, bootTimeoutMs), /\(fallback\): mitigations=off$/);
  await v.waitFor(/^kubeos: ready$/, bootTimeoutMs);
  t.notRegex(await ask(v, 'cmdline', 'cat /proc/cmdline'), /rdinit/);
  const status = JSON.parse(await ask(v, 'status', 'kubeos agent config status --json | tr -d "\\n"', 120_000)) as { committed: number; trying?: number; last: { generation: number; result: string; reason: string } };
  t.like(status, { committed: 1, last: { generation: 2, result: 'rolled-back' } });
  t.is(status.trying, undefined);
  t.regex(status.last.reason, /did not come up healthy in 3 boots/);
});
