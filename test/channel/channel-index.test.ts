import test, { type ExecutionContext } from 'ava';
import { canonicalJson } from '../../runtime/core/crypto/canonical-json.js';
import { signChannel, verifyChannel, type ChannelSigned } from '../../runtime/core/channel/channel-index.js';
import { channelUrlOf, objectKey, resolveBundleUrl } from '../../runtime/core/channel/layout.js';
import { makeTrustedKeys } from '../../runtime/core/crypto/keys.js';
import type { ErrorCode } from '../../runtime/core/errors.js';
import { makeKeys } from '../helpers/bundle-fixtures.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const sha = 'ab'.repeat(32);
const signed: ChannelSigned = {
  type: 'kubeos-channel',
  format: 1,
  channel: 'stable',
  serial: 7,
  published: '2025-01-01T00:00:00Z',
  expires: '2025-01-31T00:00:00Z',
  os: 'kubeos',
  version: '2.0.0',
  arch: 'x86_64',
  compatible: 'kubeos-test-x86_64',
  bundle: { path: `bundles/${sha}.kubeos`, size: 1234, sha256: sha },
};
const during = () => new Date('2025-01-15T00:00:00Z');

async function keysFor(t: ExecutionContext) {
  return makeKeys(await makeTempDir(t));
}

test('a signed channel index verifies and returns what was signed', async (t) => {
  const keys = await keysFor(t);
  const text = signChannel(signed, keys.privateKey);
  t.deepEqual(verifyChannel(text, { trustedKeys: keys.trusted, now: during, lastSerial: 7, channel: 'stable' }), signed);
  t.is(JSON.parse(text).signatures[0].keyid, keys.keyId);
});

const rejects = test.macro({
  async exec(t, change: (text: string) => string, options: { lastSerial?: number; now?: () => Date; channel?: string; stranger?: boolean }, code: ErrorCode) {
    const keys = await keysFor(t);
    const trusted = options.stranger ? (await keysFor(t)).trusted : keys.trusted;
    const text = change(signChannel(signed, keys.privateKey));
    const error = t.throws(() => verifyChannel(text, { trustedKeys: trusted, now: options.now ?? during, lastSerial: options.lastSerial, channel: options.channel }));
    t.is((error as { code?: string }).code, code, (error as Error).message);
  },
  title: (provided = '') => provided,
});

const same = (text: string) => text;
test('an expired channel index fails with E_CHANNEL_EXPIRED (freeze attack)', rejects, same, { now: () => new Date('2025-01-31T00:00:00Z') }, 'E_CHANNEL_EXPIRED');
test('a serial below the last one seen fails with E_CHANNEL_ROLLBACK', rejects, same, { lastSerial: 8 }, 'E_CHANNEL_ROLLBACK');
test('a changed version fails with E_SIGNATURE', rejects, (text) => text.replace('"version":"2.0.0"', '"version":"9.0.0"'), {}, 'E_SIGNATURE');
test('a raised serial fails with E_SIGNATURE', rejects, (text) => text.replace('"serial":7', '"serial":70'), {}, 'E_SIGNATURE');
test('an index signed by an unknown key fails with E_UNKNOWN_KEY', rejects, same, { stranger: true }, 'E_UNKNOWN_KEY');
test('an index for another channel fails with E_CHANNEL_INVALID', rejects, same, { channel: 'beta' }, 'E_CHANNEL_INVALID');
test('an index with no signatures fails with E_SIGNATURE', rejects, (text) => JSON.stringify({ ...JSON.parse(text), signatures: [] }), {}, 'E_SIGNATURE');
test('text that is not JSON fails with E_CHANNEL_INVALID', rejects, () => '<html>404</html>', {}, 'E_CHANNEL_INVALID');

test('a second trusted signature is enough when the first key is unknown', async (t) => {
  const a = await keysFor(t);
  const b = await keysFor(t);
  const one = JSON.parse(signChannel(signed, a.privateKey));
  const two = JSON.parse(signChannel(signed, b.privateKey));
  const both = JSON.stringify({ signed: one.signed, signatures: [...one.signatures, ...two.signatures] });
  t.is(verifyChannel(both, { trustedKeys: makeTrustedKeys([b.publicKey]), now: during }).serial, 7);
});

test('canonical JSON sorts keys at every level and drops undefined', (t) => {
  t.is(canonicalJson({ b: 1, a: { d: [2, { z: 1, y: 0 }], c: undefined } }), '{"a":{"d":[2,{"y":0,"z":1}]},"b":1}');
});

test('object keys and URLs follow the documented layout', (t) => {
  t.is(objectKey('kubeos/', 'channels/stable.json'), 'kubeos/channels/stable.json');
  t.is(objectKey(undefined, 'channels/stable.json'), 'channels/stable.json');
  t.is(channelUrlOf('https://h/bucket/kubeos', 'stable'), 'https://h/bucket/kubeos/channels/stable.json');
  t.is(resolveBundleUrl('https://h/bucket/kubeos/channels/stable.json', `bundles/${sha}.kubeos`), `https://h/bucket/kubeos/bundles/${sha}.kubeos`);
});
