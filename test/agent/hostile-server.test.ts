/**
 * `agent upgrade` against a hostile server (test/helpers/hostile-server.ts), one way of
 * misbehaving per test: each ends within a bound in a clear kubeos error (or, where the server
 * still delivered the signed bytes, in a correct install), with the active slot and the boot
 * environment as they were and the lock free again.
 */
import test from 'ava';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { hostileModes, startHostileServer, type HostileMode } from '../helpers/hostile-server.js';
import { publishToDir } from '../helpers/update-server.js';
import { makeHost, makeV2, readSlot, sha256, snapshot } from './host-fixture.js';

/** What each mode may end in: errors, or 'installed' when the signed bytes did arrive after all. */
const allowed: Record<HostileMode, string[]> = {
  'closes-midway': ['E_FETCH'],
  'ignores-range': ['installed', 'E_FETCH'],
  'wrong-content-range': ['E_FETCH'],
  'different-body-on-resume': ['E_HASH_MISMATCH', 'E_FETCH'],
  'redirect-loop': ['E_FETCH'],
  'bundle-trickle': ['E_FETCH'],
  'index-one-byte-per-second': ['E_FETCH'],
  'index-5-gb': ['E_CHANNEL_INVALID'],
  // the signed bytes all arrived: what follows them is not read
  'more-than-content-length': ['installed', 'E_FETCH'],
  // the body is bounded by the size the signed index gives: one byte more is refused
  'endless-after-bundle': ['E_BUNDLE_INVALID'],
  'stalls-mid-body': ['E_FETCH'],
};
/** networkTimeoutSeconds is 2: a stall, a drip or a dead resume ends within a few of them. */
const boundMs = 30_000;

for (const mode of hostileModes) {
  test(`a server whose ${mode.replaceAll('-', ' ')} gets ${allowed[mode].join(' or ')} within ${boundMs / 1000} s, the active slot and boot environment untouched`, async (t) => {
    const host = await makeHost(t);
    const v2 = await makeV2(host);
    const site = join(host.dir, 'site');
    await publishToDir(site, v2, host.keys.privateKey, { serial: 1 });
    // another validly signed bundle of the same size, for the server that switches bodies on resume
    const other = mode === 'different-body-on-resume' ? await readFile((await makeV2(host, { version: '2.0.0', name: 'other' })).path) : undefined;
    const server = await startHostileServer(t, site, mode, other);
    const before = await snapshot(host);
    // a trickle is judged over twice the network timeout: 1 s here, so five resumes fit the bound
    const config = { ...host.config, updateServer: server.url, networkTimeoutSeconds: mode === 'bundle-trickle' ? 1 : 2 };
    const started = Date.now();
    const messages: string[] = [];
    const outcome = await upgrade(config, { channel: 'stable', reboot: false }).then(
      (r) => (r.kind === 'installed' ? 'installed' : r.kind),
      (error: unknown) => (isKubeosError(error) ? (messages.push(error.message), t.log(error.message), error.code) : `not a kubeos error: ${String(error)}`),
    );
    const took = Date.now() - started;
    // the reason, not undici's bare "fetch failed"
    if (mode === 'redirect-loop') t.regex(messages.join(' '), /fetch failed: .*redirect/i);
    if (mode === 'bundle-trickle') t.regex(messages.join(' '), /slower than 4096 bytes\/s/);
    if (mode === 'endless-after-bundle') t.regex(messages.join(' '), /longer than the \d+ bytes the signed channel index gives/);
    if (mode === 'stalls-mid-body') t.regex(messages.join(' '), /no data from .* for 2 s at byte \d+/);
    t.log(`${outcome} after ${took} ms and ${server.requests.length} requests`);
    t.true(allowed[mode].includes(outcome), `${outcome} (${server.requests.length} requests)`);
    t.true(took < boundMs, `took ${took} ms`);
    const after = await snapshot(host);
    t.is(after.slotA, before.slotA, 'the active slot is untouched');
    if (outcome === 'installed') {
      t.is(sha256(await readSlot(host, 'B', v2.manifest.payload.uncompressedSize)), v2.manifest.payload.uncompressedSha256, 'what was installed is the signed image');
    } else {
      t.deepEqual(after.env, before.env, 'the boot environment is untouched');
      // the lock is free: a second try gets as far as the server again
      const again = await upgrade(config, { channel: 'stable', reboot: false }).catch((error: unknown) => error);
      t.false(isKubeosError(again, 'E_LOCKED'), String(again));
    }
  });
}
