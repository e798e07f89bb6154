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
