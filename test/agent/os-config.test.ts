/**
 * `kubeos agent config` on a file-backed host: the configuration model, generations, health-gated
 * commits, restores, rollback, and SIGKILL at every step of an apply. The host's /etc and
 * /proc/sys are directories here (configRoot); /proc/sys is a FAKE of files, since a test must not
 * set the machine's own kernel parameters (the QEMU test sets real ones).
 */
import test from 'ava';
import { execa } from 'execa';
import { lstat, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AgentConfig } from '../../runtime/agent/agent-config.js';
import { applyConfig, commitConfigBoot, configRollback, configStatus } from '../../runtime/agent/os-config-apply.js';
import { decodeGrubEnv, encodeGrubEnv } from '../../runtime/core/grubenv.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { applyKernelArgs, parseOSConfig } from '../../runtime/core/os-config.js';
import { validateImage } from '../../builder/image/load-image.js';
import { bakeConfig } from '../../builder/rootfs/bake-config.js';
import { configDigest } from '../../runtime/fleet/osconfig.js';
import { bootInto, makeConfigHost as configHost } from './host-fixture.js';

const agentBin = fileURLToPath(new URL('../../dist/runtime/agent/cli/main.js', import.meta.url));

/** Every file under the host root: path → mode and content. */
async function snapshot(root: string): Promise<Record<string, string>> {
  const out: Record<string, string> = {};
  const walk = async (dir: string) => {
    for (const name of (await readdir(dir)).sort()) {
      const path = join(dir, name);
      const info = await lstat(path);
      if (info.isDirectory()) await walk(path);
      else out[path.slice(root.length)] = `${(info.mode & 0o777).toString(8)} ${await readFile(path, 'utf8')}`;
    }
  };
  await walk(root);
  return out;
}

const gen1 = {
  sysctl: { 'vm.swappiness': 10, 'net.ipv4.ip_forward': '1' },
  files: [{ path: '/etc/containerd/config.toml', content: 'version = 2\n[plugins]\n', mode: '0644' }],
  limits: [{ domain: '*', type: 'soft', item: 'nofile', value: 65536 }],
};
const gen2 = {
  sysctl: { 'vm.swappiness': 20, 'kernel.pid_max': 65536 },
  files: [{ path: '/etc/kubelet/config.yaml', content: 'kind: KubeletConfiguration\n', mode: '0640' }],
};

test('the model lists every problem at once with its path, and refuses unknown kinds', (t) => {
  const error = t.throws(() => parseOSConfig({
    sysctl: { 'bad key': 1, 'vm.swappiness': { no: 1 } },
    files: [{ path: '/usr/lib/x', content: 'x' }, { path: '/etc/../shadow', content: 'x' }, { path: '/etc/ok', content: 'x', mode: '4755' }],
    limits: [{ domain: '*', type: 'soft', item: 'files', value: 'lots' }],
    kernelArgs: { add: ['root=/dev/sdz', 'has space'] },
    pam: {},
  }, 'node.json'));
  t.true(isKubeosError(error, 'E_CONFIG_INVALID'));
  const paths = ((error as { details?: { problems?: { path: string }[] } }).details?.problems ?? []).map((p) => p.path);
  t.deepEqual(paths.sort(), [
    '$.files[0].path', '$.files[1].path', '$.files[2].mode',
    '$.kernelArgs.add[0]', '$.kernelArgs.add[1]',
    '$.limits[0].item', '$.limits[0].value',
    '$.pam',
    '$.sysctl["bad key"]', '$.sysctl["vm.swappiness"]',
  ].sort());
  t.regex((error as Error).message, /^node\.json: 10 problem\(s\)/);
});

test('apply converges the host on a generation and commits it once the health checks pass', async (t) => {
  const h = await configHost(t);
  const steps: string[] = [];
  t.like(await applyConfig(h.agent, gen1, 'gen1', (s) => steps.push(s)), { kind: 'committed', generation: 1 });
  t.is(await readFile(join(h.root, 'proc/sys/vm/swappiness'), 'utf8'), '10\n');
  t.is(await readFile(join(h.root, 'proc/sys/net/ipv4/ip_forward'), 'utf8'), '1\n');
  t.is(await readFile(join(h.root, 'etc/containerd/config.toml'), 'utf8'), 'version = 2\n[plugins]\n');
  t.is((await lstat(join(h.root, 'etc/containerd/config.toml'))).mode & 0o777, 0o644);
  t.regex(await readFile(join(h.root, 'etc/sysctl.d/90-kubeos.conf'), 'utf8'), /net\.ipv4\.ip_forward = 1\nvm\.swappiness = 10\n$/);
  t.regex(await readFile(join(h.root, 'etc/security/limits.d/90-kubeos.conf'), 'utf8'), /\* soft nofile 65536\n$/);
  t.like(await configStatus(h.agent), { committed: 1, trying: undefined, history: [1], last: { generation: 1, result: 'committed' } });
  t.true(steps.includes('committed generation 1'));
  t.like(await applyConfig(h.agent, gen1, 'gen1 again'), { kind: 'unchanged', generation: 1 });
  // agent status names the generation in force by the digest the cluster knows it by
  const { stdout } = await execa('node', [agentBin, 'agent', 'status', '--config', h.configPath, '--json']);
  t.like(JSON.parse(stdout), { config: { committed: 1, digest: configDigest(parseOSConfig(gen1, 'gen1')), last: { generation: 1, result: 'committed' } } });
});

test('the next generation undoes what it no longer sets: files and sysctls go back to what the image had', async (t) => {
  const h = await configHost(t);
  const before = await snapshot(h.root);
  await applyConfig(h.agent, gen1, 'gen1');
  await applyConfig(h.agent, gen2, 'gen2');
  t.is(await readFile(join(h.root, 'etc/containerd/config.toml'), 'utf8'), 'version = 2 # from the image\n');
  t.is((await lstat(join(h.root, 'etc/containerd/config.toml'))).mode & 0o777, 0o600);
  t.is(await readFile(join(h.root, 'proc/sys/net/ipv4/ip_forward'), 'utf8'), '0\n');
  t.is(await readFile(join(h.root, 'proc/sys/kernel/pid_max'), 'utf8'), '65536\n');
  await t.throwsAsync(lstat(join(h.root, 'etc/security/limits.d/90-kubeos.conf')));
  // and an empty configuration gives the image's host back, byte for byte
  await applyConfig(h.agent, {}, 'empty');
  t.deepEqual(await snapshot(h.root), before);
});

test('a failing health check restores the generation in force and fails with E_CONFIG_ROLLED_BACK', async (t) => {
  const h = await configHost(t);
  await applyConfig(h.agent, gen1, 'gen1');
  const committed = await snapshot(h.root);
  await writeFile(join(h.health, '50-kubelet'), '#!/bin/sh\necho "kubelet config rejected" >&2\nexit 1\n', { mode: 0o755 });
  const error = await t.throwsAsync(applyConfig(h.agent, gen2, 'gen2'));
  t.true(isKubeosError(error, 'E_CONFIG_ROLLED_BACK'), String(error));
  t.regex((error as Error).message, /generation 2 was not committed: health check .*50-kubelet failed/);
  t.deepEqual(await snapshot(h.root), committed);
  t.like(await configStatus(h.agent), { committed: 1, history: [1], last: { generation: 2, result: 'rolled-back' } });
});

test('rollback goes back to the configuration committed before, and says so when there is none', async (t) => {
  const h = await configHost(t);
  const noHistory = await t.throwsAsync(configRollback(h.agent));
  t.true(isKubeosError(noHistory, 'E_CONFIG_NO_PREVIOUS'));
  await applyConfig(h.agent, gen1, 'gen1');
  const one = await snapshot(h.root);
  await applyConfig(h.agent, gen2, 'gen2');
  t.like(await configRollback(h.agent), { kind: 'committed', generation: 3 });
  t.deepEqual(await snapshot(h.root), one);
  t.like(await configStatus(h.agent), { committed: 3, history: [3] });
  t.true(isKubeosError(await configRollback(h.agent).catch((e: unknown) => e), 'E_CONFIG_NO_PREVIOUS'));
});

const grubEnvOf = async (agent: AgentConfig) => decodeGrubEnv(await readFile(agent.bootEnv));

test('new kernel arguments go on trial in the GRUB environment, and the trial boot that passes its checks commits them', async (t) => {
  const h = await configHost(t);
  await applyConfig(h.agent, gen1, 'gen1');
  const result = await applyConfig(h.agent, { ...gen2, kernelArgs: { add: ['panic=10', 'mitigations=off'] } }, 'args', () => {}, { reboot: false });
  t.like(result, { kind: 'trying', generation: 2, rebooting: false });
  t.like(await grubEnvOf(h.agent), { kubeos_args_try: 'panic=10 mitigations=off', kubeos_args_tries: '3' });
  // its other settings are in place already; status keeps it on trial
  t.is(await readFile(join(h.root, 'proc/sys/kernel/pid_max'), 'utf8'), '65536\n');
  t.like(await configStatus(h.agent), { committed: 1, trying: 2 });
  t.true(isKubeosError(await applyConfig(h.agent, gen1, 'meanwhile').catch((e: unknown) => e), 'E_CONFIG_UNSUPPORTED'), 'one trial at a time');
  // the trial boot (GRUB said kubeos.config=trying; the initramfs wrote it down)
  await writeFile(join(h.agent.runDir, 'config-boot'), 'trying\n');
  t.like(await configStatus(h.agent), { committed: 1, trying: 2 }, 'the trial boot is not undone');
  t.like(await commitConfigBoot(h.agent), { kind: 'committed', generation: 2 });
  t.like(await grubEnvOf(h.agent), { kubeos_args_A: 'panic=10 mitigations=off', kubeos_args_try: '', kubeos_args_tries: '0' });
  t.like(await configStatus(h.agent), { committed: 2, trying: undefined, history: [1, 2] });
});

test('kernel arguments that never come up healthy: GRUB boots the committed ones and the rest of the generation is undone', async (t) => {
  const h = await configHost(t);
  await applyConfig(h.agent, gen1, 'gen1');
  const committed = await snapshot(h.root);
  await applyConfig(h.agent, { ...gen2, kernelArgs: { add: ['rdinit=/nonexistent'] } }, 'bad args', () => {}, { reboot: false });
  // bootTries failed trial boots later GRUB cleared the trial and booted the committed arguments
  const env = await grubEnvOf(h.agent);
  await writeFile(h.agent.bootEnv, encodeGrubEnv({ ...env, kubeos_args_try: '', kubeos_args_tries: '0' }));
  await writeFile(join(h.agent.runDir, 'config-boot'), 'fallback\n');
  const status = await configStatus(h.agent);
  t.like(status, { committed: 1, trying: undefined, last: { generation: 2, result: 'rolled-back' } });
  t.regex(status.last?.reason ?? '', /did not come up healthy in 3 boots/);
  t.deepEqual(await snapshot(h.root), committed);
});

test('kernel arguments are refused before anything changes when they cannot be tried: removals, or a slot on trial', async (t) => {
  const h = await configHost(t);
  const before = await snapshot(h.root);
  const removal = await t.throwsAsync(applyConfig(h.agent, { kernelArgs: { remove: ['quiet'] } }, 'removal', () => {}, { reboot: false }));
  t.true(isKubeosError(removal, 'E_CONFIG_UNSUPPORTED'), String(removal));
  t.regex((removal as Error).message, /set at build time/);
  await writeFile(join(h.agent.runDir, 'boot'), 'trying\n');
  const trial = await t.throwsAsync(applyConfig(h.agent, { kernelArgs: { add: ['panic=10'] } }, 'during an upgrade trial', () => {}, { reboot: false }));
  t.true(isKubeosError(trial, 'E_CONFIG_UNSUPPORTED'), String(trial));
  t.deepEqual(await snapshot(h.root), before);
  t.like(await configStatus(h.agent), { committed: 0, trying: undefined });
});

test('SIGKILL at every step of an apply leaves the committed generation in force once the agent runs again', async (t) => {
  t.timeout(5 * 60_000);
  const h = await configHost(t);
  await applyConfig(h.agent, gen1, 'gen1');
  const committed = await snapshot(h.root);
  // many steps: ten files, four sysctls, limits, two health checks
  const big = {
    sysctl: { 'vm.swappiness': 1, 'net.ipv4.ip_forward': 1, 'kernel.pid_max': 99999, 'fs.inotify.max_user_watches': 524288 },
    files: Array.from({ length: 10 }, (_, i) => ({ path: `/etc/app/part-${i}.conf`, content: `part ${i}\n`.repeat(100), mode: '0644' })),
    limits: [{ domain: '@admins', type: 'hard', item: 'nproc', value: 'unlimited' }],
  };
  for (const name of ['10-first', '20-second']) await writeFile(join(h.health, name), '#!/bin/sh\nexit 0\n', { mode: 0o755 });
  const file = join(h.root, '..', 'big.json');
  await writeFile(file, JSON.stringify(big));
  const run = () => execa('node', [agentBin, 'agent', 'config', 'apply', file, '--config', h.configPath], { reject: false, buffer: false, stderr: 'pipe' });
  // the step lines of a whole apply, counted once
  const dry = await execa('node', [agentBin, 'agent', 'config', 'apply', file, '--config', h.configPath], { reject: false });
  const lines = String(dry.stderr).split('\n').filter(Boolean);
  t.true(lines.length >= 20, `${lines.length} steps`);
  await applyConfig(h.agent, gen1, 'gen1 again');
  let gen1InForce = (await configStatus(h.agent)).committed;
  const outcomes: string[] = [];
  for (let k = 0; k < lines.length; k++) {
    const child = run();
    let seen = 0;
    child.stderr?.on('data', (data: Buffer) => {
      seen += data.toString().split('\n').filter(Boolean).length;
      if (seen > k) child.kill('SIGKILL');
    });
    const result = await child;
    // the lock lives in /run: a reboot clears it, as here
    await execa('rm', ['-rf', join(h.agent.runDir, 'agent.lock')]);
    const status = await configStatus(h.agent);
    const now = await snapshot(h.root);
    outcomes.push(result.signal === 'SIGKILL' ? 'killed' : `exit ${result.exitCode}`);
    if (status.committed === gen1InForce) t.deepEqual(now, committed, `kill after step ${k}: the committed generation ${status.committed} is in force`);
    else {
      // the kill came after the commit: then the new generation is the one in force, whole
      t.is(await readFile(join(h.root, 'etc/app/part-5.conf'), 'utf8'), 'part 5\n'.repeat(100));
      await applyConfig(h.agent, gen1, 'back to gen1');
      gen1InForce = (await configStatus(h.agent)).committed;
    }
    t.is(status.trying, undefined);
  }
  t.true(outcomes.filter((o) => o === 'killed').length >= 20, outcomes.join(', '));
});

test('image.json config is checked with the same model, its problems named under config', (t) => {
  const base = { name: 'x', version: '1.0.0', compatible: 'c', kernel: { package: 'linux-image-cloud-amd64', modules: [], cmdline: 'console=ttyS0' } };
  const image = validateImage({ ...base, config: { sysctl: { 'vm.swappiness': 10 }, kernelArgs: { add: ['panic=10'], remove: ['console'] } } }, 'image.json', '/images/x');
  t.deepEqual(image.config?.sysctl, { 'vm.swappiness': '10' });
  t.is(applyKernelArgs(base.kernel.cmdline + ' quiet', image.config!.kernelArgs), 'quiet panic=10');
  const error = t.throws(() => validateImage({ ...base, config: { sysctl: { 'no spaces please': 1 }, pam: true } }, 'image.json', '/images/x'));
  t.true(isKubeosError(error, 'E_IMAGE_INVALID'), String(error));
  t.regex((error as Error).message, /config\.sysctl\["no spaces please"\]/);
  t.regex((error as Error).message, /config\.pam/);
});

test('a baked configuration lands in the root: files with their modes, sysctl.d and limits.d files', async (t) => {
  const dir = (await configHost(t)).root;
  const tree = join(dir, 'tree');
  await bakeConfig(tree, parseOSConfig({ ...gen1, files: [{ path: '/etc/motd', content: 'hello\n', mode: '0600' }] }, 'image.json config'));
  t.is(await readFile(join(tree, 'etc/motd'), 'utf8'), 'hello\n');
  t.is((await lstat(join(tree, 'etc/motd'))).mode & 0o777, 0o600);
  t.regex(await readFile(join(tree, 'etc/sysctl.d/80-image.conf'), 'utf8'), /vm\.swappiness = 10/);
  t.regex(await readFile(join(tree, 'etc/security/limits.d/80-image.conf'), 'utf8'), /\* soft nofile 65536/);
});

test('a sysctl this kernel lacks is refused naming it, before anything is recorded or changed', async (t) => {
  const h = await configHost(t);
  await applyConfig(h.agent, gen1, 'gen1');
  const before = await snapshot(h.root);
  const error = await t.throwsAsync(applyConfig(h.agent, { sysctl: { 'net.ipv4.no_such_thing': 1 } }, 'typo'));
  t.true(isKubeosError(error, 'E_CONFIG_INVALID'), String(error));
  t.regex((error as Error).message, /net\.ipv4\.no_such_thing: this kernel has no/);
  t.deepEqual(await snapshot(h.root), before);
  t.like(await configStatus(h.agent), { committed: 1, trying: undefined });
});

test('a path that is a directory on the host is refused before anything changes', async (t) => {
  const h = await configHost(t);
  await applyConfig(h.agent, gen1, 'gen1');
  await mkdir(join(h.root, 'etc/zz-blocked'), { recursive: true });
  const before = await snapshot(h.root);
  const error = await t.throwsAsync(applyConfig(h.agent, { ...gen2, files: [...gen2.files, { path: '/etc/zz-blocked', content: 'x', mode: '0644' }] }, 'blocked'));
  t.true(isKubeosError(error, 'E_CONFIG_INVALID'), String(error));
  t.regex((error as Error).message, /\/etc\/zz-blocked is a directory/);
  t.deepEqual(await snapshot(h.root), before);
  t.like(await configStatus(h.agent), { committed: 1, trying: undefined });
});

test('a write that fails half way rolls back to the generation in force', async (t) => {
  const h = await configHost(t);
  await applyConfig(h.agent, gen1, 'gen1');
  const before = await snapshot(h.root);
  // /etc/zz is a file, so /etc/zz/late.conf cannot be created: that write fails after the others
  await writeFile(join(h.root, 'etc/zz'), 'a file, not a directory\n');
  const snap = await snapshot(h.root);
  const error = await t.throwsAsync(applyConfig(h.agent, { ...gen2, files: [...gen2.files, { path: '/etc/zz/late.conf', content: 'x', mode: '0644' }] }, 'late'));
  t.true(isKubeosError(error), String(error));
  t.deepEqual(await snapshot(h.root), snap);
  t.notDeepEqual(snap, before);
  t.like(await configStatus(h.agent), { committed: 1, trying: undefined, last: { result: 'rolled-back' } });
});

test('a configuration belongs to the slot it was committed on: an upgraded slot carries it over, the old slot booted again gets its own back', async (t) => {
  const h = await configHost(t);
  const host = { runDir: h.agent.runDir, osRelease: h.agent.osRelease } as Parameters<typeof bootInto>[0];
  await applyConfig(h.agent, gen1, 'gen1'); // on slot A, 1.0.0
  // the upgrade boots slot B with 2.0.0: generation 1 carries over
  await bootInto(host, 'B', 'trying', '2.0.0');
  t.like(await configStatus(h.agent), { committed: 1 });
  t.is(await readFile(join(h.root, 'proc/sys/vm/swappiness'), 'utf8'), '10\n');
  t.like(await applyConfig(h.agent, gen2, 'gen2'), { kind: 'committed', generation: 2 }); // on B
  t.is(await readFile(join(h.root, 'proc/sys/vm/swappiness'), 'utf8'), '20\n');
  // B is given up (a fallback, or agent rollback): slot A boots again with 1.0.0 and its generation 1
  await bootInto(host, 'A', 'fallback', '1.0.0');
  const steps: string[] = [];
  t.like(await configStatus(h.agent, (s) => steps.push(s)), { committed: 1, last: { generation: 1, result: 'committed' } });
  t.true(steps.some((s) => /slot A \(1\.0\.0\) booted again: restoring its generation 1 in place of 2/.test(s)), steps.join('\n'));
  t.is(await readFile(join(h.root, 'proc/sys/vm/swappiness'), 'utf8'), '10\n');
  t.is(await readFile(join(h.root, 'etc/containerd/config.toml'), 'utf8'), 'version = 2\n[plugins]\n');
  await t.throwsAsync(readFile(join(h.root, 'etc/kubelet/config.yaml'), 'utf8'), { code: 'ENOENT' }, 'generation 2\'s file is gone');
  // and booting B again (still 2.0.0) brings generation 2 back
  await bootInto(host, 'B', 'good', '2.0.0');
  t.like(await configStatus(h.agent), { committed: 2 });
  t.is(await readFile(join(h.root, 'proc/sys/vm/swappiness'), 'utf8'), '20\n');
  // a new version in B (the next upgrade) carries over what is in force instead
  await bootInto(host, 'A', 'good', '1.0.0');
  t.like(await configStatus(h.agent), { committed: 1 });
  await bootInto(host, 'B', 'trying', '3.0.0');
  t.like(await configStatus(h.agent), { committed: 1 });
  t.is(await readFile(join(h.root, 'proc/sys/vm/swappiness'), 'utf8'), '10\n');
});
