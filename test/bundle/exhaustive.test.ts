/**
 * Every damage a small bundle can take, not a few samples: cut at every 512-byte step (and one
 * byte either side), and one byte flipped in every region. Each must end in its own error code at
 * once (a bounded time per case) and leave the file as it was.
 */
import test from 'ava';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { verifyBundleFile } from '../../runtime/core/bundle/verify-bundle-file.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { flipByte, makeBundle, makeKeys, makeRootfs, member } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const perCaseMs = 10_000;

async function outcome(path: string, trusted: Parameters<typeof verifyBundleFile>[1]['trustedKeys']): Promise<string> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<string>((resolve) => {
    timer = setTimeout(() => resolve('HANG'), perCaseMs);
  });
  const verified = verifyBundleFile(path, { trustedKeys: trusted }).then(
    () => 'OK',
    (error: unknown) => (isKubeosError(error) ? error.code : `NOT A KUBEOS ERROR: ${String(error)}`),
  );
  try {
    return await Promise.race([verified, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

const cuts = test.macro(async (t, size: number, randomPart: number) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), size, randomPart);
  const created = await makeBundle(dir, keys, { rootfs });
  const bytes = await readFile(created.path);
  const end = member(bytes, 'payload.img.zst');
  const archiveEnd = end.dataOffset + Math.ceil(end.size / 512) * 512;
  const offsets = new Set<number>();
  for (let at = 0; at < archiveEnd; at += 512) for (const d of [-1, 0, 1]) if (at + d > 0 && at + d < archiveEnd) offsets.add(at + d);
  const wrong: string[] = [];
  const bad = join(dir, 'cut.kubeos');
  for (const at of [...offsets].sort((a, b) => a - b)) {
    await writeFile(bad, bytes.subarray(0, at));
    const code = await outcome(bad, keys.trusted);
    if (code !== 'E_BUNDLE_TRUNCATED') wrong.push(`cut at ${at}: ${code}`);
  }
  t.log(`${offsets.size} cuts of a ${bytes.length}-byte bundle`);
  t.deepEqual(wrong, []);
});

test('a small bundle of random data cut at every 512-byte step, and a byte either side, fails with E_BUNDLE_TRUNCATED at once', cuts, 192 * 1024, 192 * 1024);
test('a small bundle that compresses well cut at every 512-byte step, and a byte either side, fails with E_BUNDLE_TRUNCATED at once', cuts, 4 * 1024 * 1024, 16 * 1024);

test('one byte flipped in every region of a small bundle is refused with the code of that region', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 192 * 1024 });
  const bytes = await readFile(created.path);
  const cases: { where: string; at: number; codes: string[] }[] = [];
  for (const name of ['manifest.json', 'manifest.sig', 'payload.img.zst']) {
    const m = member(bytes, name);
    const header = m.dataOffset - 512;
    // every field of the ustar header: name, mode, uid, gid, size, mtime, chksum, typeflag, linkname, magic, version, uname, gname, devmajor, devminor, prefix
    const fields: [string, number][] = [['name', 0], ['mode', 100], ['uid', 108], ['gid', 116], ['size', 124], ['mtime', 136], ['chksum', 148], ['typeflag', 156], ['linkname', 157], ['magic', 257], ['version', 263], ['uname', 265], ['gname', 297], ['devmajor', 329], ['devminor', 337], ['prefix', 345]];
    for (const [field, offset] of fields) cases.push({ where: `${name} header ${field}`, at: header + offset, codes: ['E_BUNDLE_INVALID', 'E_BUNDLE_TRUNCATED', 'E_SIGNATURE', 'E_HASH_MISMATCH'] });
    const payload = name === 'payload.img.zst';
    const signed = name === 'manifest.json' ? ['E_SIGNATURE', 'E_BUNDLE_INVALID'] : name === 'manifest.sig' ? ['E_SIGNATURE', 'E_UNKNOWN_KEY', 'E_BUNDLE_INVALID'] : ['E_HASH_MISMATCH'];
    for (const [part, fraction] of [['start', 0], ['middle', 0.5], ['end', 1]] as const) {
      cases.push({ where: `${name} ${part}`, at: m.dataOffset + Math.min(m.size - 1, Math.floor(m.size * fraction)), codes: payload ? signed : signed });
    }
  }
  const wrong: string[] = [];
  const bad = join(dir, 'flipped.kubeos');
  for (const c of cases) {
    await writeFile(bad, flipByte(bytes, c.at));
    const code = await outcome(bad, keys.trusted);
    if (!c.codes.includes(code)) wrong.push(`${c.where} (byte ${c.at}): ${code}, expected ${c.codes.join(' or ')}`);
  }
  t.log(`${cases.length} flips`);
  t.deepEqual(wrong, []);
});

const notBundle = test.macro(async (t, make: () => Buffer, message: RegExp) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const file = join(dir, 'not-a-bundle');
  await writeFile(file, make());
  const error = await t.throwsAsync(verifyBundleFile(file, { trustedKeys: keys.trusted }));
  t.true(isKubeosError(error, 'E_BUNDLE_INVALID'), String(error));
  t.regex((error as Error).message, message);
  t.notRegex((error as Error).message, /Maybe the tar|gunzipped/, 'no tar-stream text');
});
test('an empty file is not a bundle, not a truncated one', notBundle, () => Buffer.alloc(0), /the file is empty/);
test('a short text file is not a bundle, not a truncated one', notBundle, () => Buffer.from('hello\n'), /starts with text \("hello\\n"/);
test('gzip data is not a bundle, and says so', notBundle, () => Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3]), /starts with gzip data/);
test('random bytes are not a bundle, without tar-stream\'s words', notBundle, () => Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) % 251)), /starts with other data/);

test('bytes appended after a bundle are E_BUNDLE_INVALID, not "truncated"; zeros after it (tar padding) are fine', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 192 * 1024 });
  const bytes = await readFile(created.path);
  const file = join(dir, 'appended.kubeos');
  for (const extra of [Buffer.from('x'.repeat(100)), Buffer.alloc(4096, 0x41)]) {
    await writeFile(file, Buffer.concat([bytes, extra]));
    t.is(await outcome(file, keys.trusted), 'E_BUNDLE_INVALID', `${extra.length} bytes appended`);
  }
  await writeFile(file, Buffer.concat([bytes, Buffer.alloc(10240)]));
  t.is(await outcome(file, keys.trusted), 'OK');
});
