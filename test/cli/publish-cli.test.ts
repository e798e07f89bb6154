import test from 'ava';
import { join } from 'node:path';
import { makeBundle, makeKeys } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';
import { kubeos as runCli } from '../helpers/cli.js';
import { s3Credentials, startS3 } from '../helpers/s3-server.js';

test('kubeos publish uploads with credentials from the environment and channel show verifies the result', async (t) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const s3 = await startS3(t);
  const created = await makeBundle(dir, keys);
  // Only 127.0.0.1: static credentials from env, no profile files, no instance metadata.
  const env = {
    AWS_ACCESS_KEY_ID: s3Credentials.accessKeyId,
    AWS_SECRET_ACCESS_KEY: s3Credentials.secretAccessKey,
    AWS_REGION: 'us-east-1',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: join(dir, 'none'),
    AWS_SHARED_CREDENTIALS_FILE: join(dir, 'none'),
  };
  const publish = await runCli(['publish', created.path, '--endpoint', s3.endpoint, '--bucket', s3.bucket, '--prefix', 'os', '--channel', 'stable', '--key', keys.privatePath, '--json'], { env });
  t.is(publish.exitCode, 0, publish.stderr);
  t.like(publish.json, { channel: 'stable', serial: 1, uploaded: true, bundleKey: `os/bundles/${created.sha256}.kubeos`, updateServer: `${s3.baseUrl}os/` });
  t.notRegex(publish.stderr, /Warning/);

  // the text says what hosts fetch, not only the s3:// keys
  const again = await runCli(['publish', created.path, '--endpoint', s3.endpoint, '--bucket', s3.bucket, '--prefix', 'os', '--channel', 'stable', '--key', keys.privatePath], { env });
  t.is(again.exitCode, 0, again.stderr);
  t.regex(again.stdout, new RegExp(`hosts +--update-server ${s3.baseUrl}os/ --channel stable\n`));
  const port = new URL(s3.endpoint).port;
  t.regex(again.stdout, new RegExp(`QEMU +kubeos qemu boot --forward 10\\.0\\.2\\.100:80=${port} for a guest built with --update-server http://10\\.0\\.2\\.100/${s3.bucket}/os/`));

  const url = `${s3.baseUrl}os/channels/stable.json`;
  const show = await runCli(['channel', 'show', url, '--pubkey', keys.publicPath, '--json']);
  t.is(show.exitCode, 0, show.stderr);
  t.like(show.json, { channel: 'stable', serial: 2, version: '2.0.0', bundleUrl: `${s3.baseUrl}os/bundles/${created.sha256}.kubeos` });
  const text = await runCli(['channel', 'show', url, '--pubkey', keys.publicPath]);
  t.regex(text.stdout, /channel stable: kubeos 2\.0\.0/);

  const rollback = await runCli(['channel', 'show', url, '--pubkey', keys.publicPath, '--last-serial', '5', '--json']);
  t.is(rollback.exitCode, 1);
  t.is(rollback.json.error.code, 'E_CHANNEL_ROLLBACK');

  const stranger = await makeKeys(dir, 'stranger');
  const unknown = await runCli(['channel', 'show', url, '--pubkey', stranger.publicPath, '--json']);
  t.is(unknown.json.error.code, 'E_UNKNOWN_KEY');

  const missing = await runCli(['channel', 'show', `${s3.baseUrl}os/channels/beta.json`, '--pubkey', keys.publicPath, '--json']);
  t.is(missing.json.error.code, 'E_FETCH');

  // a channel by name, as hosts name it, under the server they are built with
  const byName = await runCli(['channel', 'show', 'stable', '--update-server', `${s3.baseUrl}os/`, '--pubkey', keys.publicPath, '--json']);
  t.is(byName.exitCode, 0, byName.stderr);
  t.like(byName.json, { channel: 'stable', serial: 2, releases: [{ version: '2.0.0' }] });
  const noServer = await runCli(['channel', 'show', 'stable', '--pubkey', keys.publicPath, '--json']);
  t.is(noServer.exitCode, 2, 'a name without --update-server is a usage error, not a crash');
  t.is(noServer.json.error.code, 'E_USAGE');
  const badSerial = await runCli(['channel', 'show', url, '--pubkey', keys.publicPath, '--last-serial', 'abc', '--json']);
  t.is(badSerial.exitCode, 2, '--last-serial abc no longer turns the rollback check off');
  t.is(badSerial.json.error.code, 'E_USAGE');
});

const badOption = test.macro(async (t, extra: string[], message: RegExp) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const created = await makeBundle(dir, keys, { size: 1024 * 1024 });
  // no server at all: a usage error must come before any network or verify work
  const endpoint = extra.includes('--endpoint') ? [] : ['--endpoint', 'http://127.0.0.1:9'];
  const result = await runCli(['publish', created.path, '--bucket', 'b', '--channel', 'stable', '--key', keys.privatePath, ...endpoint, ...extra, '--json']);
  t.is(result.exitCode, 2, result.stderr);
  t.is(result.json.error.code, 'E_USAGE');
  t.regex(result.json.error.message, message);
  t.notRegex(result.stderr, /verify/);
});
test('publish --endpoint without http:// names the option and the fix', badOption, ['--endpoint', 'localhost:4568'], /--endpoint localhost:4568 is not an http\(s\) URL/);
test('publish --expires-days past ten years is refused, not clamped', badOption, ['--expires-days', '100000'], /--expires-days must be more than 0 and at most 3650/);
test('publish --part-size-mib below S3\'s 5 MiB is refused, not clamped', badOption, ['--part-size-mib', '1'], /--part-size-mib must be a whole number from 5 to 5120/);
test('an option given twice is a usage error naming both values, not a crash', badOption, ['--bucket', 'other'], /--bucket was given 2 times \("b", "other"\); it takes one value/);

/** What an S3 server that is there but set up wrong gets: the cause by name, and nothing uploaded or changed. */
const wrongSetup = test.macro(async (t, setup: 'no-credentials' | 'no-bucket' | 'no-server', code: RegExp, message: RegExp, hint: RegExp) => {
  const dir = await makeTempDir(t);
  const keys = await makeKeys(dir);
  const s3 = await startS3(t);
  const created = await makeBundle(dir, keys);
  const env: Record<string, string> = {
    AWS_REGION: 'us-east-1',
    AWS_EC2_METADATA_DISABLED: 'true',
    AWS_CONFIG_FILE: join(dir, 'none'),
    AWS_SHARED_CREDENTIALS_FILE: join(dir, 'none'),
    ...(setup === 'no-credentials' ? { AWS_ACCESS_KEY_ID: '', AWS_SECRET_ACCESS_KEY: '' } : { AWS_ACCESS_KEY_ID: s3Credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: s3Credentials.secretAccessKey }),
  };
  const endpoint = setup === 'no-server' ? 'http://127.0.0.1:9' : s3.endpoint;
  const bucket = setup === 'no-bucket' ? 'no-such-bucket' : s3.bucket;
  const run = await runCli(['publish', created.path, '--endpoint', endpoint, '--bucket', bucket, '--channel', 'stable', '--key', keys.privatePath, '--json'], { env });
  t.is(run.exitCode, 1, run.stderr);
  t.regex(run.json.error.code, code);
  t.regex(run.json.error.message, message);
  t.regex(run.json.error.hint, hint);
  t.notRegex(run.stderr, /upload/, 'nothing is uploaded once the setup is known to be wrong');
  t.deepEqual(await s3.listKeys(), []);
});
test('publish without credentials says which variables to set', wrongSetup, 'no-credentials', /^E_PUBLISH$/, /^no S3 credentials found for http:\/\/127\.0\.0\.1:\d+/, /AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY/);
test('publish to a bucket that does not exist says so and that publish does not create it', wrongSetup, 'no-bucket', /^E_PUBLISH$/, /^bucket no-such-bucket does not exist at http:\/\/127\.0\.0\.1:\d+/, /publish does not create buckets: create it first \(e\.g\. aws s3 mb s3:\/\/no-such-bucket --endpoint-url/);
test('publish to an endpoint nothing listens on names the endpoint and the refusal', wrongSetup, 'no-server', /^E_PUBLISH$/, /^cannot reach the S3 endpoint http:\/\/127\.0\.0\.1:9 \(ECONNREFUSED\)/, /check --endpoint/);
