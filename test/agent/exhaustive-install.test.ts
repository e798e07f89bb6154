/**
 * Every damage a small bundle can take, through the agent's two ways in (`--bundle FILE` and a
 * channel): cut at every 512-byte step, and one byte flipped in every region. Each is refused with
 * a kubeos error, and after every refusal the boot environment and the active slot are as they
 * were.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { flipByte, makeBundle, member } from '../helpers/bundle-fixtures.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { makeHost, snapshot, type Host } from './host-fixture.js';

type Damage = { what: string; bytes: Buffer };

async function damages(host: Host): Promise<{ cuts: Damage[]; flips: Damage[]; whole: Buffer; created: Awaited<ReturnType<typeof makeBundle>> }> {
  const created = await makeBundle(host.dir, host.keys, { size: 192 * 1024, name: 'small' });
  const whole = await readFile(created.path);
  const payload = member(whole, 'payload.img.zst');
  const end = payload.dataOffset + Math.ceil(payload.size / 512) * 512;
  const cuts: Damage[] = [];
  for (let at = 512; at < end; at += 512) cuts.push({ what: `cut at ${at}`, bytes: whole.subarray(0, at) });
  const flips: Damage[] = [];
  for (const name of ['manifest.json', 'manifest.sig', 'payload.img.zst']) {
    const m = member(whole, name);
    for (const [field, offset] of [['name', 0], ['mode', 100], ['size', 124], ['chksum', 148], ['typeflag', 156], ['magic', 257]] as const) {
      flips.push({ what: `${name} header ${field}`, bytes: flipByte(whole, m.dataOffset - 512 + offset) });
    }
    for (const fraction of [0, 0.5, 1]) flips.push({ what: `${name} data at ${fraction}`, bytes: flipByte(whole, m.dataOffset + Math.min(m.size - 1, Math.floor(m.size * fraction))) });
  }
  return { cuts, flips, whole, created };
}

async function expectRefused(t: ExecutionContext, host: Host, list: Damage[], attempt: (d: Damage) => Promise<unknown>): Promise<void> {
  const before = await snapshot(host);
  const wrong: string[] = [];
  for (const damage of list) {
    const outcome = await attempt(damage).then(() => 'INSTALLED', (error: unknown) => (isKubeosError(error) ? 'refused' : `not a kubeos error: ${String(error)}`));
    if (outcome !== 'refused') wrong.push(`${damage.what}: ${outcome}`);
    const after = await snapshot(host);
    if (!after.env.equals(before.env) || after.slotA !== before.slotA) wrong.push(`${damage.what}: the boot environment or the active slot changed`);
  }
  t.log(`${list.length} damaged bundles refused`);
  t.deepEqual(wrong, []);
}

test('agent upgrade --bundle refuses every cut and every flipped region of a bundle, touching nothing', async (t) => {
  t.timeout(5 * 60_000);
  const host = await makeHost(t);
  const { cuts, flips } = await damages(host);
  const file = join(host.dir, 'damaged.kubeos');
  await expectRefused(t, host, [...cuts, ...flips], async (d) => {
    await writeFile(file, d.bytes);
    return upgrade(host.config, { bundle: file, reboot: false });
  });
});

test('agent upgrade from a channel refuses every cut and every flipped region of the bundle it names, touching nothing', async (t) => {
  t.timeout(5 * 60_000);
  const host = await makeHost(t);
  const { cuts, flips, created } = await damages(host);
  const site = join(host.dir, 'site');
  await mkdir(site, { recursive: true });
  await publishToDir(site, created, host.keys.privateKey, { serial: 1 });
  const server = await startUpdateServer(t, site);
  const served = join(site, 'bundles', `${created.sha256}.kubeos`);
  await expectRefused(t, host, [...cuts, ...flips], async (d) => {
    // the server's file is damaged; the signed index still names the real size and sha256
    await writeFile(served, d.bytes);
    return upgrade({ ...host.config, updateServer: server.url, networkTimeoutSeconds: 5 }, { channel: 'stable', reboot: false });
  });
});
