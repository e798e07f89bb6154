import test, { type ExecutionContext } from 'ava';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { flipByte, makeRootfs, member } from '../helpers/bundle-fixtures.js';
import { indexBuffer } from '../../runtime/core/bundle/chunk-index.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { kubeos as runCli } from '../helpers/cli.js';

async function setup(t: ExecutionContext) {
  const dir = await makeTempDir(t);
  const keygen = await runCli(['keygen', '--out', join(dir, 'keys'), '--json']);
  t.is(keygen.exitCode, 0, keygen.stderr);
  const rootfs = await makeRootfs(join(dir, 'rootfs.img'), 6 * 1024 * 1024);
  await writeFile(join(dir, 'build.json'), JSON.stringify({ image: { name: 'kubeos', version: '1.0.0', compatible: 'kubeos-test-x86_64', arch: 'x86_64', kernelVersion: '6.1.0' } }));
  const bundle = join(dir, 'update.kubeos');
  const env = { SOURCE_DATE_EPOCH: '1700000000' };
  const create = await runCli(['bundle', 'create', '--rootfs', rootfs, '--image-version', '2.0.0', '--key', join(dir, 'keys/signing.pem'), '--out', bundle, '--json'], { env });
  t.is(create.exitCode, 0, create.stderr);
  return { dir, rootfs, bundle, keyId: keygen.json.keyId as string, pub: join(dir, 'keys/signing.pub.pem'), priv: join(dir, 'keys/signing.pem'), create };
}

test('keygen writes a private key only its owner can read and prints the key id', async (t) => {
  const { priv, pub, keyId } = await setup(t);
  t.is((await stat(priv)).mode & 0o777, 0o600);
  t.regex(await readFile(pub, 'utf8'), /BEGIN PUBLIC KEY/);
  t.regex(keyId, /^[0-9a-f]{64}$/);
});

test('keygen refuses to replace existing keys with E_OUTPUT', async (t) => {
  const { dir } = await setup(t);
  const again = await runCli(['keygen', '--out', join(dir, 'keys'), '--json']);
  t.is(again.exitCode, 1);
  t.is(again.json.error.code, 'E_OUTPUT');
});

test('bundle create takes defaults from build.json and bundle verify accepts the result', async (t) => {
  const { bundle, pub, keyId, create } = await setup(t);
  t.like(create.json.manifest, { os: 'kubeos', version: '2.0.0', compatible: 'kubeos-test-x86_64', kernelVersion: '6.1.0', keyId, created: '2023-11-14T22:13:20Z' });
  const verify = await runCli(['bundle', 'verify', bundle, '--pubkey', pub, '--compatible', 'kubeos-test-x86_64', '--json']);
  t.is(verify.exitCode, 0, verify.stderr);
  t.like(verify.json, { ok: true, keyId, sha256: create.json.sha256 });
  const text = await runCli(['bundle', 'verify', bundle, '--pubkey', pub]);
  t.regex(text.stdout, /^ok: /);
});

test('bundle info prints the manifest as text and JSON', async (t) => {
  const { bundle, keyId } = await setup(t);
  const json = await runCli(['bundle', 'info', bundle, '--json']);
  t.is(json.exitCode, 0, json.stderr);
  t.like(json.json, { manifest: { version: '2.0.0', payload: { compression: 'zstd', uncompressedSize: 6 * 1024 * 1024 } }, signature: { keyid: keyId }, verified: false });
  const text = await runCli(['bundle', 'info', bundle]);
  t.regex(text.stdout, /kubeos 2\.0\.0 \(x86_64\)/);
});

test('bundle verify of a tampered payload exits 1 with E_HASH_MISMATCH', async (t) => {
  const { dir, bundle, pub } = await setup(t);
  const bytes = await readFile(bundle);
  const p = member(bytes, 'payload.img.zst');
  const bad = join(dir, 'bad.kubeos');
  await writeFile(bad, flipByte(bytes, p.dataOffset + 1000));
  const result = await runCli(['bundle', 'verify', bad, '--pubkey', pub, '--json']);
  t.is(result.exitCode, 1);
  t.is(result.json.error.code, 'E_HASH_MISMATCH');
  t.regex(result.stderr, /E_HASH_MISMATCH/);
});

test('bundle verify with a key that did not sign exits 1 with E_UNKNOWN_KEY', async (t) => {
  const { dir, bundle } = await setup(t);
  await runCli(['keygen', '--out', join(dir, 'other')]);
  const result = await runCli(['bundle', 'verify', bundle, '--pubkey', join(dir, 'other/signing.pub.pem'), '--json']);
  t.is(result.exitCode, 1);
  t.is(result.json.error.code, 'E_UNKNOWN_KEY');
});

test('bundle create without metadata or build.json exits 2 with E_USAGE', async (t) => {
  const { dir, priv } = await setup(t);
  const lone = await makeRootfs(join(await makeTempDir(t), 'rootfs.img'), 1024 * 1024);
  const result = await runCli(['bundle', 'create', '--rootfs', lone, '--key', priv, '--out', join(dir, 'x.kubeos'), '--json']);
  t.is(result.exitCode, 2);
  t.is(result.json.error.code, 'E_USAGE');
  await t.throwsAsync(stat(join(dir, 'x.kubeos')));
});

test('bundle create refuses v1.5.0, which would rank above 2.0.0, naming the fix, and writes nothing', async (t) => {
  const { dir, rootfs, priv } = await setup(t);
  const out = join(dir, 'v.kubeos');
  const result = await runCli(['bundle', 'create', '--rootfs', rootfs, '--image-version', 'v1.5.0', '--key', priv, '--out', out, '--json']);
  t.is(result.exitCode, 2);
  t.is(result.json.error.code, 'E_USAGE');
  t.regex(result.json.error.message, /--image-version: "v1\.5\.0" is not a semantic version: write 1\.5\.0/);
  await t.throwsAsync(stat(out));
});

test('--version still names the OS version on bundle create, as it did before --image-version', async (t) => {
  const { dir, rootfs, priv } = await setup(t);
  const result = await runCli(['bundle', 'create', '--rootfs', rootfs, '--version', '3.0.0', '--key', priv, '--out', join(dir, 'old.kubeos'), '--json']);
  t.is(result.exitCode, 0, result.stderr);
  t.is(result.json.manifest.version, '3.0.0');
});

test('a misspelt option gets "did you mean", and --json=true is JSON like --json', async (t) => {
  const { dir, rootfs, priv } = await setup(t);
  const result = await runCli(['bundle', 'create', '--rootfs', rootfs, '--imge-version', '2.0.0', '--key', priv, '--out', join(dir, 'x.kubeos'), '--json=true']);
  t.is(result.exitCode, 2);
  const error = JSON.parse(result.stdout).error as { code: string; message: string };
  t.is(error.code, 'E_USAGE');
  t.is(error.message, 'Unknown option: --imge-version; did you mean --image-version?');
});

test('bundle create refuses a rootfs that is not a filesystem image (a README) before signing anything', async (t) => {
  const { dir, priv } = await setup(t);
  const readme = join(dir, 'README.md');
  await writeFile(readme, '# hello\n\nnot a filesystem\n');
  const out = join(dir, 'readme.kubeos');
  const result = await runCli(['bundle', 'create', '--rootfs', readme, '--image-version', '2.0.0', '--key', priv, '--out', out, '--compatible', 'c', '--os-name', 'k', '--kernel-version', '6', '--json']);
  t.is(result.exitCode, 2);
  t.regex(result.json.error.message, /--rootfs .*README\.md is not an ext4 or squashfs filesystem image \(it starts with text: "# hello/);
  await t.throwsAsync(stat(out));
});

test('bundle create into a directory that does not exist names the output and the fix, not zstd', async (t) => {
  const { dir, rootfs, priv } = await setup(t);
  const out = join(dir, 'no-such-dir', 'x.kubeos');
  const result = await runCli(['bundle', 'create', '--rootfs', rootfs, '--image-version', '2.0.0', '--key', priv, '--out', out, '--json']);
  t.is(result.exitCode, 1);
  t.is(result.json.error.code, 'E_OUTPUT');
  t.regex(result.json.error.message, /cannot write the bundle .*no-such-dir\/x\.kubeos: ENOENT/);
  t.regex(result.json.error.hint, /create the directory/);
});

test('keygen --out naming a file says it wants a directory, even with --force, and leaves the file alone', async (t) => {
  const { dir } = await setup(t);
  const file = join(dir, 'notes.txt');
  await writeFile(file, 'mine\n');
  const result = await runCli(['keygen', '--out', file, '--force', '--json']);
  t.is(result.exitCode, 2);
  t.regex(result.json.error.message, /--out .*notes\.txt is a file; keygen writes a directory/);
  t.is(await readFile(file, 'utf8'), 'mine\n');
});

test('bundle verify, info and publish name a bundle that is missing or a directory, with the fix', async (t) => {
  const dir = await makeTempDir(t);
  t.is((await runCli(['keygen', '--out', join(dir, 'keys')])).exitCode, 0);
  const cases = [
    { args: ['bundle', 'verify', join(dir, 'missing.kubeos'), '--pubkey', join(dir, 'keys', 'signing.pub.pem')], message: /^cannot open bundle .*missing\.kubeos: no such file$/ },
    { args: ['bundle', 'info', dir], message: /^bundle .* is a directory$/ },
    { args: ['publish', dir, '--endpoint', 'http://127.0.0.1:9', '--bucket', 'b', '--channel', 'stable', '--key', join(dir, 'keys', 'signing.pem')], message: /^bundle .* is a directory$/ },
  ];
  for (const { args, message } of cases) {
    const run = await runCli([...args, '--json']);
    t.is(run.exitCode, 2, args.join(' '));
    t.is(run.json.error.code, 'E_USAGE');
    t.regex(run.json.error.message, message);
    t.regex(run.json.error.hint, /the \.kubeos file kubeos bundle create wrote/);
  }
});

test('a private key where a public key belongs is refused, not quietly turned into its public half', async (t) => {
  const { bundle, priv } = await setup(t);
  const verify = await runCli(['bundle', 'verify', bundle, '--pubkey', priv, '--json']);
  t.is(verify.exitCode, 1);
  t.is(verify.json.error.code, 'E_KEY_INVALID');
  t.regex(verify.json.error.message, /signing\.pem: is a private key, where a public key belongs$/);
  t.regex(verify.json.error.hint, /signing\.pub\.pem/);
});

test('bundle create --chunks writes the chunk store of its index and the index object, and bundle info shows the index', async (t) => {
  const { dir, rootfs, priv } = await setup(t);
  const out = join(dir, 'v2.kubeos');
  const chunks = join(dir, 'chunks');
  const create = await runCli(['bundle', 'create', '--rootfs', rootfs, '--image-version', '2.0.0', '--key', priv, '--out', out, '--chunks', chunks, '--json'], { env: { SOURCE_DATE_EPOCH: '1700000000' } });
  t.is(create.exitCode, 0, create.stderr);
  const distinct = new Set(indexBuffer(await readFile(rootfs)).map((c) => c.sha256));
  const object = create.json.manifest.payload.indexObject as { sha256: string; chunkCount: number };
  t.is(create.json.manifest.payload.index, undefined);
  t.like(create.json.chunks, { written: distinct.size, skipped: 0, indexObject: { sha256: object.sha256, written: true } });
  t.deepEqual((await readdir(chunks)).filter((n) => n.endsWith('.zst')).sort(), [...[...distinct].map((s) => `${s}.zst`), `${object.sha256}.zst`].sort());
  const info = await runCli(['bundle', 'info', out]);
  t.regex(info.stdout, new RegExp(`delta index +${object.chunkCount} content-defined chunks \\(16/64/256 KiB\\), index object chunks/${object.sha256}\\.zst`));
  const none = await runCli(['bundle', 'create', '--rootfs', rootfs, '--image-version', '2.0.0', '--key', priv, '--out', join(dir, 'v1.kubeos'), '--no-index', '--json'], { env: { SOURCE_DATE_EPOCH: '1700000000' } });
  t.is(none.exitCode, 0, none.stderr);
  t.is(none.json.manifest.payload.index, undefined);
  t.is(none.json.manifest.payload.indexObject, undefined);
});
