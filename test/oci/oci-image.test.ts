/**
 * `kubeos oci build`: the image deploy/ runs is a valid OCI image (skopeo and umoci read it), two
 * builds are byte-identical, and the unpacked root filesystem really runs the kubeos CLI.
 */
import { execa } from 'execa';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { findTool } from '../../runtime/core/exec.js';
import { kubeos, type CliResult } from '../helpers/cli.js';
import { makeFileTempDir, removeFileTempDirs } from '../helpers/temp-dir.js';
import { testNeeding } from '../helpers/tools.js';

const version = (JSON.parse(await readFile(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
const test = await testNeeding(['skopeo', 'umoci', 'ldd', 'chroot']);
test.after.always(removeFileTempDirs);
const env = { SOURCE_DATE_EPOCH: '1700000000' };
let dir = '';
let first: CliResult;
let second: CliResult;

test.before(async () => {
  dir = await makeFileTempDir('kubeos-oci-');
  // two builds from the same sources, as a CI pipeline would make them
  first = await kubeos(['oci', 'build', '--out', join(dir, 'one'), '--archive', join(dir, 'one.tar'), '--json'], { env });
  second = await kubeos(['oci', 'build', '--out', join(dir, 'two'), '--archive', join(dir, 'two.tar'), '--json'], { env });
});

test.serial('oci build prints the digest and reference deploy/ pins', async (t) => {
  const result = first;
  t.is(result.exitCode, 0, result.stderr);
  t.regex(result.json.digest, /^sha256:[0-9a-f]{64}$/);
  t.is(result.json.reference, `ghcr.io/kubeos/kubeos:${version}`);
});

test.serial('two builds are byte-identical', async (t) => {
  const [a, b] = [first, second];
  t.is(b.exitCode, 0, b.stderr);
  t.is(a.json.digest, b.json.digest);
  t.true((await readFile(join(dir, 'one.tar'))).equals(await readFile(join(dir, 'two.tar'))), 'the archives are the same bytes');
});

test.serial('skopeo reads the layout and the archive', async (t) => {
  const { json } = first;
  for (const ref of [`oci:${join(dir, 'one')}:${version}`, `oci-archive:${join(dir, 'one.tar')}:${version}`]) {
    const inspected = JSON.parse(String((await execa('skopeo', ['inspect', ref], { timeout: 60_000 })).stdout)) as Record<string, any>;
    t.is(inspected['Digest'], json.digest, ref);
    t.is(inspected['Architecture'], 'amd64');
    t.is(inspected['Os'], 'linux');
    t.is(inspected['Layers'].length, 1);
  }
});

test.serial('umoci unpacks it and the root filesystem runs the kubeos CLI', async (t) => {
  const bundle = join(dir, 'bundle');
  await execa('umoci', ['unpack', '--rootless', '--image', `${join(dir, 'one')}:${version}`, bundle], { timeout: 120_000 });
  const config = JSON.parse(await readFile(join(bundle, 'config.json'), 'utf8')) as { process: { args: string[] } };
  t.deepEqual(config.process.args, ['/usr/bin/node', '/opt/kubeos/kubeos.mjs', '--help']);
  if (process.getuid?.() !== 0) {
    t.log('not root: the chroot run is skipped');
    return;
  }
  // nothing from the host: only what the image holds
  const chroot = (await findTool('chroot'))!;
  const run = await execa(chroot, [join(bundle, 'rootfs'), '/usr/bin/node', '/opt/kubeos/kubeos.mjs', 'operator', 'run', '--help'], { reject: false, timeout: 60_000, env: { PATH: '/usr/bin' }, extendEnv: false });
  t.is(run.exitCode, 0, String(run.stderr));
  t.regex(String(run.stdout), /--metrics-address/);
  // the same image is the agent DaemonSet's (deploy/agent-daemonset.yaml): agent daemon --kubernetes
  const agent = await execa(chroot, [join(bundle, 'rootfs'), '/usr/bin/node', '/opt/kubeos/kubeos.mjs', 'agent', 'daemon', '--help'], { reject: false, timeout: 60_000, env: { PATH: '/usr/bin' }, extendEnv: false });
  t.is(agent.exitCode, 0, String(agent.stderr));
  t.regex(String(agent.stdout), /--kubernetes/);
  t.regex(String(agent.stdout), /--host-namespaces/);
  // the agent DaemonSet reboots the host through nsenter: it must run from the image alone too
  const nsenter = await execa(chroot, [join(bundle, 'rootfs'), '/usr/bin/nsenter', '--version'], { reject: false, timeout: 60_000, env: { PATH: '/usr/bin' }, extendEnv: false });
  t.is(nsenter.exitCode, 0, String(nsenter.stderr));
  // and the agent decompresses every payload with zstd
  const zstd = await execa(chroot, [join(bundle, 'rootfs'), '/usr/bin/zstd', '--version'], { reject: false, timeout: 60_000, env: { PATH: '/usr/bin' }, extendEnv: false });
  t.is(zstd.exitCode, 0, String(zstd.stderr));
});
