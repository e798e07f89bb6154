/** `kubeos bundle diff` as users run it: two real ext4 images one added file apart, as images and as a bundle, and inputs it refuses. */
import type { ExecutionContext } from 'ava';
import { createCipheriv, createHash } from 'node:crypto';
import { lutimes, mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { run } from '../../runtime/core/exec.js';
import { firstHeaderReadBytes } from '../../runtime/core/bundle/measure-bundle-header.js';
import { kubeos } from '../helpers/cli.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { testNeeding } from '../helpers/tools.js';
import { makeBundle as makeBundleInProcess, makeKeys } from '../helpers/bundle-fixtures.js';

const test = await testNeeding(['mke2fs', 'zstd']);
const added = 1024 * 1024 + 12345;

function bytes(size: number, seed: string): Buffer {
  return createCipheriv('aes-256-ctr', createHash('sha256').update(seed).digest(), Buffer.alloc(16)).update(Buffer.alloc(size));
}

/** A tree of a few files, as an ext4 image made the way kubeos build makes one (fixed UUID, hash seed and times). */
async function makeImage(dir: string, name: string, extra: boolean): Promise<string> {
  const tree = join(dir, `${name}-tree`);
  for (const sub of ['etc', 'usr/bin', 'usr/lib', 'var/lib']) await mkdir(join(tree, sub), { recursive: true });
  await writeFile(join(tree, 'etc/os-release'), 'NAME=kubeos\n');
  for (let i = 0; i < 6; i++) await writeFile(join(tree, `usr/bin/tool${i}`), bytes(300_000 + i * 1000, `tool${i}`));
  await writeFile(join(tree, 'usr/lib/libbig.so'), bytes(3 * 1024 * 1024, 'lib'));
  await writeFile(join(tree, 'var/lib/data'), bytes(500_000, 'data'));
  if (extra) await writeFile(join(tree, 'usr/lib/added.bin'), bytes(added, 'added'));
  // every time fixed, as kubeos build fixes them: on a busy machine the two trees are written in
  // different seconds, and inode times that differ made the diff count inode-table chunks too
  const fixed = new Date(1_700_000_000_000);
  for (const entry of await readdir(tree, { recursive: true })) await lutimes(join(tree, entry), fixed, fixed);
  await lutimes(tree, fixed, fixed);
  const image = join(dir, `${name}.img`);
  const uuid = '6b1f2c3d-0000-4000-8000-000000000001';
  await run('mke2fs', ['-q', '-t', 'ext4', '-F', '-b', '4096', '-O', '^has_journal', '-U', uuid, '-E', `hash_seed=${uuid},root_owner=0:0`, '-d', tree, image, '16M'], {
    env: { E2FSPROGS_FAKE_TIME: '1700000000' },
  });
  return image;
}

/** A signed bundle of `image` (keys made on first use in `dir`/keys) and its chunk store in `dir`/chunks; its `bundle create --json` result. */
async function makeBundle(t: ExecutionContext, dir: string, image: string, version: string): Promise<{ path: string; size: number; indexObject: string }> {
  const keys = join(dir, 'keys');
  if ((await kubeos(['keygen', '--out', keys])).exitCode !== 0) t.log('keys exist already');
  const path = join(dir, `${version}.kubeos`);
  const metadata = ['--image-version', version, '--compatible', 'kubeos-test-x86_64', '--os-name', 'kubeos', '--kernel-version', '6.1.0'];
  const create = await kubeos(['bundle', 'create', '--rootfs', image, ...metadata, '--key', join(keys, 'signing.pem'), '--out', path, '--chunks', join(dir, 'chunks'), '--json'], { env: { SOURCE_DATE_EPOCH: '1700000000' } });
  t.is(create.exitCode, 0, create.stderr);
  return { path, size: create.json.size as number, indexObject: join(dir, 'chunks', `${create.json.manifest.payload.indexObject.sha256 as string}.zst`) };
}

async function setup(t: ExecutionContext) {
  const dir = await makeTempDir(t);
  return { dir, old: await makeImage(dir, 'old', false), new: await makeImage(dir, 'new', true) };
}

test('bundle diff of two images one added file apart counts about that file as new bytes', async (t) => {
  const { old, new: fresh } = await setup(t);
  const r = await kubeos(['bundle', 'diff', old, fresh, '--json']);
  t.is(r.exitCode, 0, r.stderr);
  t.like(r.json, { old: { path: old, kind: 'image' }, new: { path: fresh, kind: 'image', imageBytes: 16 * 1024 * 1024 }, rule: { kind: 'cdc', avg: 65536 }, bytes: 16 * 1024 * 1024, fullBundle: { estimated: true } });
  // the file, plus the chunks around its edges and the metadata blocks that name it (inodes, the
  // directory, bitmaps): a CI run under load measured 2.52 MB, so the bound leaves 2 MiB for those
  t.true(r.json.missingBytes >= added && r.json.missingBytes < added + 2 * 1024 * 1024, `${r.json.missingBytes} new bytes for a ${added}-byte file`);
  t.is(r.json.reusedBytes + r.json.missingBytes, r.json.bytes);
  t.true(r.json.missingCompressed > 0 && r.json.missingCompressed < r.json.fullBundle.bytes);
  const same = await kubeos(['bundle', 'diff', old, old, '--json']);
  t.like(same.json, { missingChunks: 0, missingBytes: 0 });
  const text = await kubeos(['bundle', 'diff', old, fresh]);
  t.is(text.exitCode, 0, text.stderr);
  t.regex(text.stdout, /^a host on OLD fetches \d+ of \d+ chunks of NEW: /);
  t.regex(text.stdout, /full bundle +~[\d.]+ MiB/);
});

test('bundle diff reads a bundle through its payload, verified with --pubkey and marked unverified without', async (t) => {
  const { dir, old, new: fresh } = await setup(t);
  const { path: bundle, size, indexObject } = await makeBundle(t, dir, fresh, '2.0.0');
  const images = (await kubeos(['bundle', 'diff', old, fresh, '--json'])).json;
  t.is(images.header, undefined);
  const verified = await kubeos(['bundle', 'diff', old, bundle, '--pubkey', join(dir, 'keys/signing.pub.pem'), '--json']);
  t.is(verified.exitCode, 0, verified.stderr);
  t.like(verified.json, { new: { kind: 'bundle', version: '2.0.0', verified: true, bundleBytes: size }, missingBytes: images.missingBytes, fullBundle: { bytes: size, estimated: false } });
  // a host reads the bundle's header (its first 32 KiB here) and the index object, byte for byte as the store holds it
  t.deepEqual(verified.json.header, { bundleBytes: firstHeaderReadBytes, indexObjectBytes: (await stat(indexObject)).size });
  const text = await kubeos(['bundle', 'diff', old, bundle]);
  t.regex(text.stdout, new RegExp(`header +${firstHeaderReadBytes + (await stat(indexObject)).size} bytes before any chunk`));
  const unverified = await kubeos(['bundle', 'diff', bundle, bundle, '--json']);
  t.like(unverified.json, { old: { verified: false }, new: { verified: false }, missingBytes: 0 });
});

test('bundle diff of a bundle with the inline index (made before the index object) counts its header, which holds the index', async (t) => {
  const { dir, old, new: fresh } = await setup(t);
  const keys = await makeKeys(dir);
  const inline = await makeBundleInProcess(dir, keys, { rootfs: fresh, name: 'inline', index: 'inline' });
  const images = (await kubeos(['bundle', 'diff', old, fresh, '--json'])).json;
  const r = await kubeos(['bundle', 'diff', old, inline.path, '--json']);
  t.is(r.exitCode, 0, r.stderr);
  t.like(r.json, { new: { kind: 'bundle', verified: false }, missingBytes: images.missingBytes, missingChunks: images.missingChunks });
  t.deepEqual(r.json.header, { bundleBytes: firstHeaderReadBytes });
});

test('bundle diff names the input it refuses and what to give instead, with no stack trace', async (t) => {
  const { dir, old } = await setup(t);
  const text = join(dir, 'notes.txt');
  await writeFile(text, 'not an image\n');
  const cases: Array<[string[], string, string]> = [
    [[old, join(dir, 'missing.img')], 'NEW', join(dir, 'missing.img')],
    [[text, old], 'OLD', text],
    [[old, dir], 'NEW', dir],
  ];
  for (const [args, role, path] of cases) {
    const r = await kubeos(['bundle', 'diff', ...args, '--json']);
    t.is(r.exitCode, 2, r.stderr);
    t.like(r.json.error, { code: 'E_USAGE', details: { role, path } });
    t.true(r.json.error.message.startsWith(`${role} ${path}`), r.json.error.message);
    t.regex(r.json.error.hint, /bundle file .* or a rootfs image/);
    t.notRegex(r.stderr, /\n\s+at /);
  }
  // a bundle cut short fails with its own code, naming the input
  const { path: bundle } = await makeBundle(t, dir, old, '1.0.0');
  const cut = join(dir, 'cut.kubeos');
  await writeFile(cut, (await readFile(bundle)).subarray(0, 20_000));
  const r = await kubeos(['bundle', 'diff', old, cut, '--json']);
  t.is(r.exitCode, 1);
  t.like(r.json.error, { code: 'E_BUNDLE_TRUNCATED', details: { role: 'NEW', path: cut } });
});
