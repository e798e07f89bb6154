/**
 * Owners, modes and device nodes land in the image exactly when the build does NOT run as root:
 * the staging and mke2fs run as uid 65534 (setpriv), and debugfs writes what the process could not.
 */
import test from 'ava';
import { execa } from 'execa';
import { chmod, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { compress, makeTar, ociFiles, writeBinaryArchive, type LayerEntry } from './make-oci.js';
import { canRun } from '../helpers/tools.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const child = fileURLToPath(new URL('./build-ext4-child.ts', import.meta.url));
const asRoot = process.getuid?.() === 0;
const runnable = asRoot && (await canRun(['mke2fs', 'debugfs', 'dumpe2fs']));
const maybe = runnable || process.env['CI'] === 'true' ? test : test.skip;

const layer: LayerEntry[] = [
  { name: 'usr/', type: 'directory', mode: 0o755 },
  { name: 'usr/bin/', type: 'directory', mode: 0o755 },
  { name: 'usr/bin/su', content: 'su', mode: 0o4755 },
  { name: 'home/', type: 'directory', mode: 0o755 },
  { name: 'home/user/', type: 'directory', mode: 0o750, uid: 1000, gid: 1000 },
  { name: 'home/user/notes', content: 'mine', mode: 0o640, uid: 1000, gid: 1000 },
  { name: 'dev/', type: 'directory', mode: 0o755 },
  { name: 'dev/null', type: 'character-device', mode: 0o666, devmajor: 1, devminor: 3 },
];

maybe('an image built by an unprivileged user still has root-owned setuid files, uid 1000 files and device nodes', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-nobody-');
  const oci = await writeBinaryArchive(join(dir, 'image.oci.tar'), ociFiles([await compress(await makeTar(layer), 'gzip', dir)]));
  const work = join(dir, 'work');
  await mkdir(work);
  await chmod(dir, 0o755);
  await chmod(work, 0o777);
  const image = join(work, 'root.ext4');
  const result = await execa('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', process.execPath, '--import=tsx', child, oci, work, image], {
    reject: false,
    env: { HOME: work, TMPDIR: work },
  });
  t.is(result.exitCode, 0, String(result.stderr));
  t.regex(String(result.stdout), /^uid 65534 wrote/);
  const stat = async (path: string) => (await execa('debugfs', ['-R', `stat ${path}`, image])).stdout;
  t.regex(await stat('/usr/bin/su'), /Mode:\s+04755[\s\S]*User:\s+0\s+Group:\s+0/);
  t.regex(await stat('/home/user/notes'), /Mode:\s+0640[\s\S]*User:\s+1000\s+Group:\s+1000/);
  t.regex(await stat('/home/user'), /Mode:\s+0750[\s\S]*User:\s+1000/);
  t.regex(await stat('/dev/null'), /Type: character special\s+Mode:\s+0666[\s\S]*User:\s+0/);
  // the image file itself belongs to the unprivileged user: nothing ran as root
  const { stdout } = await execa('stat', ['-c', '%u', image]);
  t.is(stdout.trim(), '65534');
});
