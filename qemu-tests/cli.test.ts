/** `kubeos qemu boot` as users run it: bad input fails fast with a code. */
import test from 'ava';
import { jsonError, kubeos } from '../test/helpers/cli.js';

test('a disk image that does not exist is named before QEMU starts', async (t) => {
  const result = await kubeos(['qemu', 'boot', '/nonexistent/disk.img', '--expect', 'ready', '--timeout', '5', '--json']);
  t.is(result.exitCode, 1);
  const error = jsonError(result.stdout);
  t.is(error.code, 'E_QEMU');
  t.true(error.message.includes('/nonexistent/disk.img'));
});

test('an --expect that is not a regular expression is a usage error', async (t) => {
  const result = await kubeos(['qemu', 'boot', '/nonexistent/disk.img', '--expect', '(', '--json']);
  t.is(result.exitCode, 2);
  t.is(jsonError(result.stdout).code, 'E_USAGE');
});

test('a build of something that is not an image definition names it', async (t) => {
  const result = await kubeos(['build', 'no-such-image', '--out', '/tmp/kubeos-never', '--json']);
  t.is(result.exitCode, 1);
  t.is(jsonError(result.stdout).code, 'E_IMAGE_INVALID');
});

test('a --forward that is not GUEST_ADDRESS:PORT=HOST_PORT is a usage error naming it and the form, before QEMU starts', async (t) => {
  for (const forward of ['10.0.2.100:80', '10.0.2.100:80=99999', '10.0.2.300:80=4568', 'host:80=4568']) {
    const result = await kubeos(['qemu', 'boot', '/nonexistent/disk.img', '--forward', forward, '--json']);
    t.is(result.exitCode, 2, forward);
    t.is(result.json.error.code, 'E_USAGE');
    t.is(result.json.error.message, `--forward ${forward} is not GUEST_ADDRESS:GUEST_PORT=HOST_PORT`);
    t.regex(result.json.error.hint, /--forward 10\.0\.2\.100:80=4568/);
  }
});
