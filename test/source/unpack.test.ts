/**
 * Root filesystem sources: an OCI image made here with tar-stream (three layers: gzip, plain,
 * zstd; whiteouts, an opaque directory, a hard link, a setuid file, files of uid 1000, a device,
 * a FIFO, an xattr) becomes a staging tree plus metadata, then ext4 and squashfs images whose
 * inodes debugfs and unsquashfs show exactly as the layers say.
 */
import test from 'ava';
import { execa } from 'execa';
import { createReadStream, createWriteStream } from 'node:fs';
import { lstat, mkdir, readFile, readdir, readlink, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { makeExt4 } from '../../builder/disk/make-ext4.js';
import { makeSquashfs } from '../../builder/disk/make-squashfs.js';
import { applyLayer, newStagingTree, removePath } from '../../builder/source/apply-layer.js';
import type { FileMeta } from '../../builder/source/file-meta.js';
import { applyTimes, stageSource } from '../../builder/source/stage-source.js';
import type { RootfsSource } from '../../builder/source/rootfs-source.js';
import { compress, dockerFiles, makeTar, ociFiles, writeBinaryArchive, writeLayoutDir, type LayerEntry } from './make-oci.js';
import { testNeeding } from '../helpers/tools.js';
import { makeFileTempDir, removeFileTempDirs } from '../helpers/temp-dir.js';

const fsTest = await testNeeding(['mke2fs', 'debugfs', 'dumpe2fs', 'mksquashfs', 'unsquashfs', 'zstd']);
const epoch = 1_700_000_000;
const base = await makeFileTempDir('kubeos-source-');

const layer1: LayerEntry[] = [
  { name: 'etc/', type: 'directory' },
  { name: 'etc/config', content: 'v1' },
  { name: 'usr/', type: 'directory' },
  { name: 'usr/bin/', type: 'directory' },
  { name: 'usr/lib/', type: 'directory' },
  { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
  { name: 'usr/bin/tool', content: '#!/bin/sh\n', mode: 0o755 },
  { name: 'opt/', type: 'directory' },
  { name: 'opt/old/', type: 'directory' },
  { name: 'opt/old/a.txt', content: 'lower' },
  { name: 'home/', type: 'directory' },
  { name: 'home/user/', type: 'directory', uid: 1000, gid: 1000, mode: 0o750 },
  { name: 'home/user/notes', content: 'mine', uid: 1000, gid: 1000, mode: 0o640, mtime: 1_600_000_000 },
  { name: 'gone.txt', content: 'deleted above' },
  { name: 'dev/', type: 'directory' },
  { name: 'dev/null', type: 'character-device', devmajor: 1, devminor: 3, mode: 0o666 },
  // numbers past what debugfs's mknod takes (a 16-bit minor, a major above 255)
  { name: 'dev/big', type: 'block-device', devmajor: 300, devminor: 70000, mode: 0o660 },
];
const layer2: LayerEntry[] = [
  { name: '.wh.gone.txt' },
  { name: 'opt/old/.wh..wh..opq' },
  { name: 'opt/old/b.txt', content: 'upper' },
  { name: 'usr/bin/su', content: 'setuid', mode: 0o4755 },
  { name: 'usr/bin/su-again', type: 'link', linkname: 'usr/bin/su' },
  { name: 'lib/libx.so', content: 'through the lib symlink' },
];
const layer3: LayerEntry[] = [
  { name: 'etc/config', content: 'v3', mode: 0o600 },
  { name: 'run/', type: 'directory' },
  { name: 'run/ctl', type: 'fifo', mode: 0o620 },
];
const xattrEntry: LayerEntry = { name: 'usr/bin/tool', content: '#!/bin/sh\n', mode: 0o755, pax: { 'SCHILY.xattr.user.origin': 'layer3' } };

async function layers(withXattr: boolean): Promise<Buffer[]> {
  return [
    await compress(await makeTar(layer1), 'gzip', base),
    await makeTar(layer2),
    await compress(await makeTar(withXattr ? [...layer3, xattrEntry] : layer3), 'zstd', base),
  ];
}

let counter = 0;
async function stage(source: (dir: string) => Promise<RootfsSource>) {
  const dir = join(base, `case-${counter++}`);
  await mkdir(dir, { recursive: true });
  const tree = await stageSource(await source(dir), join(dir, 'root'), { work: join(dir, 'work') });
  return { dir, tree };
}

const ociTar = async (dir: string, withXattr = true): Promise<RootfsSource> => ({ type: 'oci', path: await writeBinaryArchive(join(dir, 'image.oci.tar'), ociFiles(await layers(withXattr))), ref: undefined });

async function checkStaged(t: import('ava').ExecutionContext, root: string, meta: Map<string, { uid: number; gid: number; mode: number; mtime?: number; kind: string; rdev?: number[] }>) {
  t.deepEqual((await readdir(root)).sort(), ['dev', 'etc', 'home', 'lib', 'opt', 'run', 'usr']);
  t.deepEqual(await readdir(join(root, 'opt/old')), ['b.txt']);
  t.is(await readFile(join(root, 'etc/config'), 'utf8'), 'v3');
  t.is(await readlink(join(root, 'lib')), 'usr/lib');
  t.is(await readFile(join(root, 'usr/lib/libx.so'), 'utf8'), 'through the lib symlink');
  t.is((await stat(join(root, 'usr/bin/su'))).ino, (await stat(join(root, 'usr/bin/su-again'))).ino);
  t.like(meta.get('home/user/notes'), { uid: 1000, gid: 1000, mode: 0o640, mtime: 1_600_000_000 });
  t.like(meta.get('usr/bin/su'), { uid: 0, mode: 0o4755 });
  t.like(meta.get('dev/null'), { kind: 'char', rdev: [1, 3], mode: 0o666 });
  t.like(meta.get('run/ctl'), { kind: 'fifo', mode: 0o620 });
  t.false(meta.has('gone.txt'));
  t.false(meta.has('opt/old/a.txt'));
}

test('an OCI archive is applied layer by layer with whiteouts, an opaque directory, links and owners', async (t) => {
  const { dir, tree } = await stage((d) => ociTar(d));
  await checkStaged(t, join(dir, 'root'), tree.meta);
  t.deepEqual(tree.meta.get('usr/bin/tool')?.xattrs, { 'user.origin': Buffer.from('layer3') });
});

test('what the layers remove or replace is moved aside into the work directory, out of the tree and its metadata', async (t) => {
  const { dir, tree } = await stage((d) => ociTar(d));
  const removed = join(dir, 'work', 'removed');
  const contents = await Promise.all((await readdir(removed)).map((name) => readFile(join(removed, name), 'utf8')));
  // gone.txt (a whiteout), opt/old/a.txt (an opaque directory), etc/config v1 and usr/bin/tool (replaced)
  t.deepEqual(contents.sort(), ['#!/bin/sh\n', 'deleted above', 'lower', 'v1']);
  t.false(tree.meta.has('gone.txt'));
});

test('a removed directory takes its MetaList entries along, and without a usable place to move it to it is deleted', async (t) => {
  const dir = join(base, `remove-${counter++}`);
  const root = join(dir, 'root');
  await mkdir(join(root, 'a/b'), { recursive: true });
  await writeFile(join(root, 'a/b/c'), 'c');
  const meta = (): Map<string, FileMeta> => new Map(['a', 'a/b', 'a/b/c', 'keep'].map((rel) => [rel, { kind: 'file', mode: 0o644, uid: 0, gid: 0, mtime: undefined }]));
  await mkdir(join(dir, 'removed'));
  const aside = { ...newStagingTree(root, join(dir, 'removed')), meta: meta() };
  await removePath(aside, 'a');
  t.deepEqual([...aside.meta.keys()], ['keep']);
  t.is(await readFile(join(dir, 'removed/0/b/c'), 'utf8'), 'c');
  await mkdir(join(root, 'a/b'), { recursive: true });
  await writeFile(join(root, 'a/b/c'), 'c');
  const nowhere = { ...newStagingTree(root, join(dir, 'missing')), meta: meta() };
  await removePath(nowhere, 'a');
  t.deepEqual([...nowhere.meta.keys()], ['keep']);
  t.deepEqual(await readdir(root), []);
  t.is(nowhere.removed, undefined);
});

const plainOci = async (dir: string, entries: LayerEntry[][]): Promise<RootfsSource> => ({
  type: 'oci', path: await writeBinaryArchive(join(dir, 'plain.oci.tar'), ociFiles(await Promise.all(entries.map((e) => makeTar(e))), { mediaType: 'application/vnd.oci.image.layer.v1.tar' })), ref: undefined,
});

test('uncompressed layers give the same tree without writing what a later whiteout or opaque directory removes', async (t) => {
  const { dir, tree } = await stage((d) => plainOci(d, [layer1, layer2, [...layer3, xattrEntry]]));
  await checkStaged(t, join(dir, 'root'), tree.meta);
  const removed = join(dir, 'work', 'removed');
  const contents = await Promise.all((await readdir(removed)).map((name) => readFile(join(removed, name), 'utf8')));
  // gone.txt and opt/old/a.txt were never written; replaced files still are, and are moved aside
  t.deepEqual(contents.sort(), ['#!/bin/sh\n', 'v1']);
});

test('an entry a later layer removes is still written when a layer between links to it or writes through a symlink under it', async (t) => {
  const { dir, tree } = await stage((d) => plainOci(d, [
    [{ name: 'x/', type: 'directory' }, { name: 'x/target', content: 'linked' }, { name: 'x/s', type: 'symlink', linkname: '/kept' }, { name: 'kept/', type: 'directory' }],
    [{ name: 'link', type: 'link', linkname: 'x/target' }, { name: 'x/s/file', content: 'through the symlink' }],
    [{ name: '.wh.x' }],
  ]));
  const root = join(dir, 'root');
  t.is(await readFile(join(root, 'link'), 'utf8'), 'linked');
  t.is(await readFile(join(root, 'kept/file'), 'utf8'), 'through the symlink');
  t.deepEqual((await readdir(root)).sort(), ['kept', 'link']);
  t.false(tree.meta.has('x/target'));
});

test('a layer whose whiteouts differ from what the first read of it found is refused', async (t) => {
  const dir = join(base, `marks-${counter++}`);
  await mkdir(dir, { recursive: true });
  const file = join(dir, 'layer.tar');
  await writeFile(file, await makeTar([{ name: '.wh.other' }]));
  const covered = { isCovered: () => false, marks: ['whiteout gone'] };
  const error = await t.throwsAsync(applyLayer(newStagingTree(join(dir, 'root')), createReadStream(file), file, {}, undefined, covered));
  t.is((error as { code?: string }).code, 'E_SOURCE_INVALID');
});

test('an OCI layout directory and a docker save archive give the same tree', async (t) => {
  const fromDir = await stage(async (d) => ({ type: 'oci', path: await writeLayoutDir(join(d, 'layout'), ociFiles(await layers(true))), ref: 'test:1' }));
  await checkStaged(t, join(fromDir.dir, 'root'), fromDir.tree.meta);
  const plain = [await makeTar(layer1), await makeTar(layer2), await makeTar(layer3)];
  const fromDocker = await stage(async (d) => ({ type: 'docker-archive', path: await writeBinaryArchive(join(d, 'docker.tar'), dockerFiles(plain).reverse()), ref: undefined }));
  await checkStaged(t, join(fromDocker.dir, 'root'), fromDocker.tree.meta);
});

test('an OCI archive gives the same tree read in place (layers stored out of turn, each entry behind a PAX header) and streamed (the archive gzip-compressed)', async (t) => {
  // a PAX record on every entry: the layers' bytes lie past an extended header block each
  const archive = async (file: string) => {
    const pack = tar.pack();
    const done = pipeline(pack, createWriteStream(file));
    for (const f of ociFiles(await layers(true)).reverse()) {
      await pipeline(Readable.from([f.data]), pack.entry({ name: `./${f.name}`, size: f.data.length, mode: 0o644, mtime: new Date(0), pax: { comment: 'x'.repeat(700) } }));
    }
    pack.finalize();
    await done;
    return file;
  };
  const inPlace = await stage(async (d) => ({ type: 'oci', path: await archive(join(d, 'image.oci.tar')), ref: undefined }));
  await checkStaged(t, join(inPlace.dir, 'root'), inPlace.tree.meta);
  // read where they lie: no layer was copied aside to wait for its turn
  t.deepEqual((await readdir(join(inPlace.dir, 'work'))).filter((name) => name !== 'removed'), []);
  const streamed = await stage(async (d) => {
    const file = join(d, 'image.oci.tar.gz');
    await writeFile(file, await compress(await readFile(await archive(join(d, 'plain.tar'))), 'gzip', d));
    return { type: 'oci', path: file, ref: undefined };
  });
  await checkStaged(t, join(streamed.dir, 'root'), streamed.tree.meta);
  // a compressed archive streams once: the layers that came before their turn waited in the work folder
  t.true((await readdir(join(streamed.dir, 'work'))).length > 0);
  t.deepEqual([...streamed.tree.meta.keys()].sort(), [...inPlace.tree.meta.keys()].sort());
});

test('a gzip tar and a directory are root filesystem sources too', async (t) => {
  const { dir, tree } = await stage(async (d) => {
    const file = join(d, 'root.tar.gz');
    await (await import('node:fs/promises')).writeFile(file, await compress(await makeTar([...layer1, ...layer3]), 'gzip', d));
    return { type: 'tar', path: file };
  });
  t.is(await readFile(join(dir, 'root/etc/config'), 'utf8'), 'v3');
  t.like(tree.meta.get('home/user/notes'), { uid: 1000, mode: 0o640 });
  const copied = await stage(async () => ({ type: 'dir', path: join(dir, 'root') }));
  t.is(await readFile(join(copied.dir, 'root/usr/bin/tool'), 'utf8'), '#!/bin/sh\n');
  t.is(await readlink(join(copied.dir, 'root/lib')), 'usr/lib');
});

async function debugfs(image: string, command: string): Promise<string> {
  const { stdout, stderr } = await execa('debugfs', ['-R', command, image]);
  return `${stdout}\n${stderr}`;
}

fsTest('the ext4 image holds the owners, modes, device nodes, xattrs and mtimes of the layers', async (t) => {
  const { dir, tree } = await stage((d) => ociTar(d));
  const root = join(dir, 'root');
  const { normalizeTimes } = await import('../../builder/rootfs/stage-rootfs.js');
  const treeBytes = await normalizeTimes(root, epoch);
  await applyTimes(tree);
  const image = join(dir, 'root.ext4');
  await makeExt4({ file: image, size: 16 * 1024 * 1024, label: 't', uuid: '6a1a8e0e-0000-4000-8000-000000000001', journal: false, tree: root, treeBytes, epoch, meta: tree.meta });
  await execa('e2fsck', ['-fn', image]);
  const su = await debugfs(image, 'stat /usr/bin/su');
  t.regex(su, /Mode:\s+04755/);
  t.regex(su, /User:\s+0\s+Group:\s+0/);
  t.regex(su, /Links: 2/);
  const notes = await debugfs(image, 'stat /home/user/notes');
  t.regex(notes, /Mode:\s+0640/);
  t.regex(notes, /User:\s+1000\s+Group:\s+1000/);
  t.regex(notes, /mtime: 0x5f5e1000/);
  t.regex(await debugfs(image, 'stat /home/user'), /Mode:\s+0750[\s\S]*User:\s+1000/);
  const devnull = await debugfs(image, 'stat /dev/null');
  t.regex(devnull, /Type: character special\s+Mode:\s+0666/);
  t.regex(devnull, /Device major\/minor number: 01:03/);
  t.regex(await debugfs(image, 'stat /dev/big'), /Type: block special[\s\S]*Device major\/minor number: 300:70000/);
  t.regex(await debugfs(image, 'stat /run/ctl'), /Type: FIFO\s+Mode:\s+0620/);
  t.regex(await debugfs(image, 'ea_get /usr/bin/tool user.origin'), /layer3/);
  t.regex(await debugfs(image, 'stat /etc/config'), /Mode:\s+0600/);
  t.regex(await debugfs(image, 'stat /gone.txt'), /File not found/);
  t.notRegex(await debugfs(image, 'ls /opt/old'), /a\.txt/);
  t.regex(await debugfs(image, 'cat /lib/libx.so'), /through the lib symlink/);
});

/** The OCI test archive as a squashfs image, staged and timed like a build does it. */
async function squashfsOf(withXattr: boolean): Promise<{ dir: string; image: string }> {
  const { dir, tree } = await stage((d) => ociTar(d, withXattr));
  const root = join(dir, 'root');
  const { normalizeTimes } = await import('../../builder/rootfs/stage-rootfs.js');
  await normalizeTimes(root, epoch);
  await applyTimes(tree);
  const image = join(dir, 'root.sqfs');
  await makeSquashfs({ file: image, tree: root, slotSize: 64 * 1024 * 1024, epoch, meta: tree.meta });
  return { dir, image };
}

fsTest('the squashfs image holds the owners, modes, device nodes and mtimes of the layers', async (t) => {
  const { dir, image } = await squashfsOf(false);
  const { stdout } = await execa('unsquashfs', ['-lln', image]);
  const line = (path: string) => stdout.split('\n').find((l) => l.endsWith(`squashfs-root/${path}`) || l.includes(`squashfs-root/${path} -> `))?.replace(/\s+/g, ' ') ?? '';
  t.regex(line('usr/bin/su'), /^-rwsr-xr-x 0\/0 6 /);
  t.regex(line('home/user/notes'), /^-rw-r----- 1000\/1000 4 2020-09-1\d/);
  t.regex(line('home/user'), /^drwxr-x--- 1000\/1000 /);
  t.regex(line('dev/null'), /^crw-rw-rw- 0\/0 1, ?3 /);
  t.regex(line('dev/big'), /^brw-rw---- /);
  if (process.getuid?.() === 0) {
    // unsquashfs -lln prints a minor past 255 wrongly; the node it makes (as root) is what the kernel reads
    const out = join(dir, 'nodes');
    await execa('unsquashfs', ['-q', '-n', '-d', out, image, 'dev/big']);
    t.is((await execa('stat', ['-c', '%t:%T', join(out, 'dev/big')])).stdout, `${(300).toString(16)}:${(70000).toString(16)}`);
  }
  t.regex(line('run/ctl'), /^prw--w---- 0\/0 /);
  t.regex(line('etc/config'), /^-rw------- 0\/0 2 /);
  t.is(line('gone.txt'), '');
  t.is(line('opt/old/a.txt'), '');
  t.regex(line('lib'), /^lrwxrwxrwx 0\/0 .*\/lib -> usr\/lib$/);
  const again = await execa('unsquashfs', ['-lln', image]);
  t.is(again.stdout, stdout);
});

const asRoot = process.getuid?.() === 0;
(asRoot ? fsTest : test.skip)('a squashfs root built as root carries the xattrs of the layers', async (t) => {
  const { dir, image } = await squashfsOf(true);
  const out = join(dir, 'unpacked');
  await execa('unsquashfs', ['-q', '-n', '-d', out, image]);
  const { stdout } = await execa('getfattr', ['--only-values', '-n', 'user.origin', join(out, 'usr/bin/tool')]);
  t.is(stdout, 'layer3');
  t.regex((await execa('stat', ['-c', '%a %u', join(out, 'usr/bin/su')])).stdout, /^4755 0$/);
});


/** A plain tar whose entry `name` gets other bytes in its header (name bytes or typeflag), with its checksum fixed. */
async function patchedTar(entries: LayerEntry[], name: string, patch: (header: Buffer) => void): Promise<Buffer> {
  const plain = await makeTar(entries);
  const at = plain.indexOf(name);
  const header = plain.subarray(at, at + 512);
  patch(header);
  header.fill(' ', 148, 156);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += header[i] ?? 0;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 'latin1');
  return plain;
}
const tarSource = async (d: string, data: Buffer): Promise<RootfsSource> => {
  const file = join(d, 'source.tar');
  await (await import('node:fs/promises')).writeFile(file, data);
  return { type: 'tar', path: file };
};

// Hostile and damaged archives: refused with a code, and nothing lands outside the build folder.
const gz = (entries: LayerEntry[]) => makeTar(entries).then((b) => compress(b, 'gzip', base));
const hostile: [string, (dir: string) => Promise<RootfsSource>, string][] = [
  ['an entry named with ".." is refused', async (d) => ({ type: 'oci', path: await writeBinaryArchive(join(d, 'a.tar'), ociFiles([await gz([{ name: 'etc/../../outside/evil', content: 'x' }])])), ref: undefined }), 'E_SOURCE_HOSTILE'],
  ['an absolute entry name is refused', async (d) => ({ type: 'oci', path: await writeBinaryArchive(join(d, 'a.tar'), ociFiles([await gz([{ name: '/outside/evil', content: 'x' }])])), ref: undefined }), 'E_SOURCE_HOSTILE'],
  ['a symlink that climbs out of the root is refused', async (d) => ({ type: 'oci', path: await writeLayoutDir(join(d, 'layout'), ociFiles([await gz([{ name: 'etc/', type: 'directory' }, { name: 'etc/out', type: 'symlink', linkname: '../../outside' }])])), ref: undefined }), 'E_SOURCE_HOSTILE'],
  ['a hard link to a path outside the root is refused', async (d) => ({ type: 'oci', path: await writeBinaryArchive(join(d, 'a.tar'), ociFiles([await gz([{ name: 'stolen', type: 'link', linkname: '../outside/secret' }])])), ref: undefined }), 'E_SOURCE_HOSTILE'],
  ['a layer whose digest does not match its manifest is refused', async (d) => ({ type: 'oci', path: await writeBinaryArchive(join(d, 'a.tar'), ociFiles([await gz([{ name: 'a', content: 'x' }])], { lie: () => ({ digest: `sha256:${'0'.repeat(64)}` }) })), ref: undefined }), 'E_HASH_MISMATCH'],
  ['a docker layer whose diff_id does not match is refused', async (d) => {
    const files = dockerFiles([await makeTar([{ name: 'a', content: 'x' }])]);
    const layer = files[0];
    if (layer) layer.data = await makeTar([{ name: 'a', content: 'y' }]);
    return { type: 'docker-archive', path: await writeBinaryArchive(join(d, 'a.tar'), files), ref: undefined };
  }, 'E_HASH_MISMATCH'],
  ['a truncated gzip layer is refused', async (d) => {
    const layer = await gz(Array.from({ length: 50 }, (_, i) => ({ name: `f${i}`, content: 'x'.repeat(5000) + String(i) })));
    return { type: 'oci', path: await writeLayoutDir(join(d, 'layout'), ociFiles([layer.subarray(0, Math.floor(layer.length / 2))], { lie: () => ({ size: layer.length }) })), ref: undefined };
  }, 'E_SOURCE_TRUNCATED'],
  ['a device node whose major number Linux cannot hold is refused', async (d) => ({ type: 'oci', path: await writeBinaryArchive(join(d, 'a.tar'), ociFiles([await gz([{ name: 'dev/', type: 'directory' }, { name: 'dev/huge', type: 'character-device', devmajor: 5000, devminor: 1 }])])), ref: undefined }), 'E_SOURCE_INVALID'],
  ['a device node whose minor number Linux cannot hold is refused', async (d) => {
    // tar-stream writes at most 6 octal digits: the 7-digit minor 2000000 goes into the header by hand
    const plain = await makeTar([{ name: 'dev/', type: 'directory' }, { name: 'dev/huge', type: 'block-device', devmajor: 8, devminor: 1 }]);
    const header = plain.indexOf('dev/huge');
    plain.write('7502200\0', header + 337, 'latin1');
    plain.fill(' ', header + 148, header + 156);
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += plain[header + i] ?? 0;
    plain.write(`${sum.toString(8).padStart(6, '0')}\0 `, header + 148, 'latin1');
    return { type: 'oci', path: await writeBinaryArchive(join(d, 'a.tar'), ociFiles([await compress(plain, 'gzip', base)])), ref: undefined };
  }, 'E_SOURCE_INVALID'],
  // two names that differ in one invalid byte would both have become "caf\uFFFD"
  ['an entry name that is not UTF-8 is refused, naming its bytes', async (d) => tarSource(d, await patchedTar([{ name: 'cafX', content: 'latin1' }, { name: 'cafY', content: 'other' }], 'cafX', (h) => { h[3] = 0xe9; })), 'E_SOURCE_INVALID'],
  ['a GNU sparse entry is refused, not unpacked as its sparse map', async (d) => tarSource(d, await patchedTar([{ name: 'holes.img', content: 'sparse map and data' }], 'holes.img', (h) => { h[156] = 'S'.charCodeAt(0); })), 'E_SOURCE_INVALID'],
  ['a PAX sparse entry is refused, not unpacked as its sparse map', async (d) => tarSource(d, await makeTar([{ name: 'holes.img', content: 'map', pax: { 'GNU.sparse.major': '1', 'GNU.sparse.minor': '0', 'GNU.sparse.name': 'holes.img', 'GNU.sparse.realsize': '1048576' } }])), 'E_SOURCE_INVALID'],
  // the first pass skips a big layer's data without reading it: the end of the file still counts
  ['an uncompressed OCI archive cut short inside a big layer is refused', async (d) => {
    const whole = await writeBinaryArchive(join(d, 'whole.tar'), ociFiles([await makeTar([{ name: 'big', content: 'z'.repeat(6 << 20) }])]).reverse());
    await writeFile(join(d, 'cut.tar'), (await readFile(whole)).subarray(0, 3 << 20));
    return { type: 'oci', path: join(d, 'cut.tar'), ref: undefined };
  }, 'E_SOURCE_TRUNCATED'],
  ['a truncated plain tar source is refused', async (d) => {
    const file = join(d, 'cut.tar');
    const whole = await makeTar([{ name: 'big', content: 'y'.repeat(100_000) }]);
    await (await import('node:fs/promises')).writeFile(file, whole.subarray(0, 40_000));
    return { type: 'tar', path: file };
  }, 'E_SOURCE_TRUNCATED'],
];

for (const [title, make, code] of hostile) {
  test(`hostile source: ${title}`, async (t) => {
    const dir = join(base, `hostile-${counter++}`);
    await mkdir(join(dir, 'outside'), { recursive: true });
    const source = await make(dir);
    const error = await t.throwsAsync(stageSource(source, join(dir, 'build', 'root'), { work: join(dir, 'build', 'work') }));
    t.is((error as { code?: string }).code, code);
    if (/device node/.test(title)) t.regex((error as Error).message, /dev\/huge: (major|minor) \d+ is outside Linux's/);
    if (/not UTF-8/.test(title)) t.regex((error as Error).message, /"caf\\xe9" is not UTF-8/);
    if (/sparse/.test(title)) t.regex((error as Error).message, /holes\.img .*sparse/);
    t.deepEqual(await readdir(join(dir, 'outside')), []);
  });
}

test('UTF-8 names arrive exactly, from the header and from PAX records', async (t) => {
  const dir = join(base, `utf8-${counter++}`);
  await mkdir(dir, { recursive: true });
  const source = await tarSource(dir, await makeTar([{ name: 'café', content: 'header' }, { name: 'naïve-' + 'x'.repeat(120), content: 'pax' }]));
  const root = join(dir, 'build', 'root');
  await stageSource(source, root, { work: join(dir, 'build', 'work') });
  t.deepEqual((await readdir(root)).sort(), ['café', 'naïve-' + 'x'.repeat(120)].sort());
});

test('a directory source holding a file name that is not UTF-8 is refused, naming the directory', async (t) => {
  const dir = join(base, `bytes-${counter++}`);
  const src = join(dir, 'src');
  await mkdir(join(src, 'etc'), { recursive: true });
  // Node writes a Buffer path as its bytes
  await (await import('node:fs/promises')).writeFile(Buffer.from(`${join(src, 'etc')}/caf\xe9`, 'latin1'), 'x');
  const error = await t.throwsAsync(stageSource({ type: 'dir', path: src }, join(dir, 'build', 'root'), { work: join(dir, 'build', 'work') }));
  t.is((error as { code?: string }).code, 'E_SOURCE_INVALID');
  t.regex((error as Error).message, /src\/etc: a file name there is not UTF-8/);
});

test('a symlink to an absolute path redirects later layers inside the root, never out of it', async (t) => {
  const dir = join(base, `contained-${counter++}`);
  await mkdir(join(dir, 'outside'), { recursive: true });
  const outside = join(dir, 'outside');
  const source: RootfsSource = { type: 'oci', path: await writeLayoutDir(join(dir, 'layout'), ociFiles([
    await gz([{ name: 'escape', type: 'symlink', linkname: outside }, { name: 'up', type: 'symlink', linkname: '/' }]),
    await gz([{ name: 'escape/pwned', content: 'x' }, { name: 'up/pwned-too', content: 'y' }]),
  ])), ref: undefined };
  const { tree } = await (async () => ({ tree: await stageSource(source, join(dir, 'build', 'root'), { work: join(dir, 'build', 'work') }) }))();
  t.deepEqual(await readdir(outside), []);
  t.true(tree.meta.has(`${outside.slice(1)}/pwned`));
  t.true((await lstat(join(dir, 'build', 'root', 'pwned-too'))).isFile());
});

test('a binary xattr in a SCHILY.xattr PAX record arrives byte for byte', async (t) => {
  const { rewritePaxData } = await import('../../builder/source/rewrite-pax.js');
  const { xattrsOf } = await import('../../builder/source/apply-layer.js');
  const capability = Buffer.from([0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0xff, 0xfe, 0x80, 0x00]);
  const body = Buffer.concat([Buffer.from(' SCHILY.xattr.security.capability='), capability, Buffer.from('\n')]);
  const length = String(body.length + 2).length + body.length;
  const pax = Buffer.concat([Buffer.from(`${length}`), body, Buffer.from('14 path=abcde\n')]);
  const rewritten = rewritePaxData(pax);
  const records: Record<string, string> = {};
  for (const line of rewritten.toString('utf8').split('\n').filter(Boolean)) {
    const [key, ...value] = line.slice(line.indexOf(' ') + 1).split('=');
    records[key as string] = value.join('=');
  }
  t.is(records['path'], 'abcde');
  t.deepEqual(xattrsOf(records, 'x', 'test')?.['security.capability'], capability);
});

test.after.always('remove the temporary directories', removeFileTempDirs);
