/** The length of a bundle's header, measured from a prefix of it, for the agent's Range request. */
import test from 'ava';
import { readFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { measureBundleHeader } from '../../runtime/core/bundle/measure-bundle-header.js';
import { readBundleHeader } from '../../runtime/core/bundle/read-bundle.js';
import { makeBundle, makeKeys, member } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';

test('from any prefix that reaches the payload\'s tar header, the exact length up to the payload\'s first byte; from shorter ones, a bound that holds it', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-measure-header-');
  const created = await makeBundle(dir, await makeKeys(dir), { size: 300 * 1024, name: 'measured' });
  const whole = await readFile(created.path);
  const payloadStart = member(whole, 'payload.img.zst').dataOffset;
  for (let cut = 512; cut <= payloadStart + 4096; cut += 512) {
    const measured = await measureBundleHeader(whole.subarray(0, cut));
    if (cut >= payloadStart) t.deepEqual(measured, { bytes: payloadStart }, `cut at ${cut}`);
    else t.true(measured !== undefined && 'guess' in measured && measured.guess >= payloadStart, `cut at ${cut}: ${JSON.stringify(measured)}`);
  }
  // what it measures is enough to read the header
  const header = await readBundleHeader(Readable.from([whole.subarray(0, payloadStart)]));
  t.is(header.manifest.version, created.manifest.version);
});

test('a prefix that does not start like a bundle measures as nothing', async (t) => {
  t.is(await measureBundleHeader(Buffer.alloc(0)), undefined);
  t.is(await measureBundleHeader(Buffer.from('<html>not a bundle</html>'.padEnd(2048, ' '))), undefined);
});
