/**
 * Installing an update: `kubeos agent upgrade` from a server on 127.0.0.1 into a file-backed slot
 * (download, verify every chunk, decompress, write, sync, read back, switch the boot environment)
 * against the floor of the same bytes through `curl | zstd -d | dd` in a shell of its own (wall
 * time, and CPU: user + system of the agent's threads and zstd against the floor's three tools),
 * and against `rauc install` of the same image (see run-rauc.ts); at 164 MiB (images/minimal's
 * root) and 1 GiB; and the agent's peak RSS on the 1 GiB image against the 164 MiB one (flat =
 * ratio ~1; the goal is under 150 MiB). The server is
 * `busybox httpd`, a process apart from the bench, serving all three in the same run. node runs
 * the install as /usr/bin/kubeos runs the daemon, and once more as it runs `agent upgrade` from a
 * shell (without the daemon's heap flag, see agentNodeFlags).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import * as tar from 'tar-stream';
import { createBundle } from '../../builder/bundle/create-bundle.js';
import { agentInstallNodeFlags, agentNodeFlags } from '../../builder/rootfs/bundle-agent.js';
import { bootEnvToGrub, initialBootEnv } from '../../runtime/core/boot-env.js';
import { payloadMember } from '../../runtime/core/bundle/manifest.js';
import { generateKeyPair, parsePrivateKey } from '../../runtime/core/crypto/keys.js';
import { encodeGrubEnv } from '../../runtime/core/grubenv.js';
import { loadBinarySample, median, MiB, row, runChild, runs, writeImage, type Bench, type BenchRow } from './measure.js';
import { runFloorMeasured } from './run-floor.js';
import { createRaucBundle, makeRaucSigner, missingRaucTools, startRaucHost, type RaucHost } from './run-rauc.js';
import { serveStatic } from './serve-static.js';

const child = fileURLToPath(new URL('./agent-child.js', import.meta.url));
const rounds = 3;
const floorLabel = 'floor: curl -s | zstd -d | dd conv=notrunc,fdatasync in a shell, server busybox httpd (a separate process)';
const directLabel = 'floor with O_DIRECT writes: the same with dd iflag=fullblock oflag=direct, past the page cache as the agent writes';
/** The floor's pipeline; `$3` adds dd flags (none for the floor, O_DIRECT for the stricter one). */
const floorScript = 'curl -sf "$1" | zstd -d -c -q | dd of="$2" bs=4M $3 conv=notrunc,fdatasync status=none';
const raucLabel = 'rauc install URL + sync SLOT (plain bundle: downloaded whole, signature checked, loop-mounted, copied), rauc service on a private bus, same server';

async function extractPayload(bundle: string, out: string): Promise<void> {
  const extract = tar.extract();
  const done = (async () => {
    for await (const entry of extract) {
      if (entry.header.name === payloadMember) await pipeline(entry, createWriteStream(out));
      else entry.resume();
    }
  })();
  await pipeline(createReadStream(bundle), extract);
  await done;
}

/** A file-backed host booted from slot A; `seed` is an image to use as slot A (read only: the agent never writes its booted slot). */
export async function makeHost(dir: string, slotSize: number, pubPath: string, seed?: string): Promise<{ config: string; slotB: string }> {
  await mkdir(dir, { recursive: true });
  const slotA = seed ?? join(dir, 'slotA.img');
  const slotB = join(dir, 'slotB.img');
  for (const slot of seed === undefined ? [slotA, slotB] : [slotB]) {
    await writeFile(slot, '');
    await truncate(slot, slotSize);
  }
  await writeFile(join(dir, 'grubenv'), encodeGrubEnv(bootEnvToGrub(initialBootEnv)));
  await mkdir(join(dir, 'run'), { recursive: true });
  await writeFile(join(dir, 'run', 'slot'), 'A\n');
  await writeFile(join(dir, 'os-release'), 'VERSION_ID=1.0.0\n');
  const config = join(dir, 'agent.json');
  await writeFile(config, JSON.stringify({
    compatible: 'bench', trustedKeys: [pubPath], bootEnv: join(dir, 'grubenv'), stateDir: join(dir, 'state'),
    runDir: join(dir, 'run'), osRelease: join(dir, 'os-release'), slots: { A: { path: slotA }, B: { path: slotB } },
  }));
  return { config, slotB };
}

async function makeRaucSlots(dir: string, size: number): Promise<{ slotA: string; slotB: string }> {
  await mkdir(dir, { recursive: true });
  const slotA = join(dir, 'slotA.img');
  const slotB = join(dir, 'slotB.img');
  for (const slot of [slotA, slotB]) {
    await rm(slot, { force: true });
    await writeFile(slot, '');
    await truncate(slot, size);
  }
  return { slotA, slotB };
}

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-agent-'));
  const www = join(dir, 'www');
  await mkdir(www);
  const server = await serveStatic(www);
  const base = server.base;
  try {
    const pair = generateKeyPair();
    const pub = join(dir, 'signing.pub.pem');
    await writeFile(pub, pair.publicPem);
    const raucMissing = await missingRaucTools();
    const signer = raucMissing.length === 0 ? await makeRaucSigner(dir) : undefined;
    const sample = await loadBinarySample();
    const rows: BenchRow[] = [];
    const rss: Record<string, number> = {};
    for (const [label, size] of [['164 MiB', 164 * MiB], ['1 GiB', 1024 * MiB]] as const) {
      const image = join(dir, 'rootfs.img');
      await writeImage(image, size, sample);
      const bundle = join(www, 'bundle.kubeos');
      await createBundle({ rootfs: image, out: bundle, privateKey: parsePrivateKey(pair.privatePem), sourceDateEpoch: 0, metadata: { os: 'kubeos', version: '2.0.0', arch: 'x86_64', compatible: 'bench', kernelVersion: '0' } });
      if (signer !== undefined) await createRaucBundle(image, join(www, 'bundle.raucb'), join(dir, 'rauc-content'), signer);
      await rm(image);
      await extractPayload(bundle, join(www, 'payload.zst'));

      let rauc: RaucHost | undefined;
      let raucSlotB: string | undefined;
      if (signer !== undefined) {
        const slots = await makeRaucSlots(join(dir, `rauc-${size}`), size);
        raucSlotB = slots.slotB;
        rauc = await startRaucHost(join(dir, `rauc-${size}`), signer.cert, slots.slotA, slots.slotB);
      }
      try {
        // alternating runs, medians: on a shared 2-core machine single runs swing by a third.
        // Each round starts with a different one, so none always runs first on a cold cache.
        const times: Record<'floor' | 'direct' | 'agent' | 'shell' | 'rauc', number[]> = { floor: [], direct: [], agent: [], shell: [], rauc: [] };
        const cpu: Record<'floor' | 'direct' | 'agent' | 'shell', number[]> = { floor: [], direct: [], agent: [], shell: [] };
        const runFloorStep = async (name: 'floor' | 'direct', ddFlags: string) => {
          const floorHost = await makeHost(join(dir, `${name}-${size}`), size, pub);
          // $3 unquoted on purpose: empty, or two flags for dd
          const measured = await runFloorMeasured(floorScript, [`${base}/payload.zst`, floorHost.slotB, ddFlags]);
          times[name].push(measured.seconds);
          cpu[name].push(measured.cpuSeconds);
          await rm(join(dir, `${name}-${size}`), { recursive: true, force: true });
        };
        const runAgent = async (name: 'agent' | 'shell', nodeFlags: readonly string[]) => {
          const host = await makeHost(join(dir, `${name}-${size}`), size, pub);
          const agent = await runChild<{ seconds: number; cpuSeconds: number; maxRssMiB: number }>(child, [host.config, `${base}/bundle.kubeos`], nodeFlags);
          times[name].push(agent.seconds);
          cpu[name].push(agent.cpuSeconds);
          rss[label] = Math.max(rss[label] ?? 0, agent.maxRssMiB);
          await rm(join(dir, `${name}-${size}`), { recursive: true, force: true });
        };
        const steps = {
          floor: () => runFloorStep('floor', ''),
          // the page cache's cost swings several-fold on this VM (docs/agent.md): this floor does not pay it
          direct: () => runFloorStep('direct', 'iflag=fullblock oflag=direct'),
          // node as /usr/bin/kubeos runs the daemon (fleet installs) and `agent upgrade` from a shell
          agent: () => runAgent('agent', agentNodeFlags(['agent', 'daemon'])),
          shell: () => runAgent('shell', agentNodeFlags(['agent', 'upgrade'])),
          rauc: async () => {
            if (rauc === undefined || raucSlotB === undefined) return;
            // a fresh (sparse) standby slot each time, like the other two get
            await rm(raucSlotB, { force: true });
            await writeFile(raucSlotB, '');
            await truncate(raucSlotB, size);
            times.rauc.push(await rauc.install(`${base}/bundle.raucb`));
          },
        };
        const order = ['floor', 'direct', 'agent', 'shell', 'rauc'] as const;
        for (let round = 0; round < rounds; round++) {
          for (let i = 0; i < order.length; i++) await steps[order[(round + i) % order.length] ?? 'floor']();
        }
        const agent = median(times.agent);
        rows.push(row(`agent upgrade ${label} from 127.0.0.1 into a file slot, as the daemon runs it (median of ${rounds})`, floorLabel, agent, median(times.floor), 's',
          `goal <= ${label === '1 GiB' ? '1.25' : '1.5'}x; the agent also verifies every chunk and reads the slot back; runs ${runs(times.agent)} vs ${runs(times.floor)}`));
        rows.push(row(`agent upgrade ${label} CPU, user + system (median of ${rounds})`, 'the floor\'s processes (curl, zstd, dd)', median(cpu.agent), median(cpu.floor), 's',
          `${label === '1 GiB' ? 'goal <= 1.5x; ' : ''}the agent's threads and its zstd; neither counts the server; runs ${runs(cpu.agent)} vs ${runs(cpu.floor)}`));
        rows.push(row(`agent upgrade ${label} vs the O_DIRECT floor (median of ${rounds})`, directLabel, agent, median(times.direct), 's',
          `no goal of its own: a stricter floor, steady where the page cache is not; runs ${runs(times.agent)} vs ${runs(times.direct)}`));
        rows.push(row(`agent upgrade ${label} CPU vs the O_DIRECT floor (median of ${rounds})`, 'the O_DIRECT floor\'s processes (curl, zstd, dd)', median(cpu.agent), median(cpu.direct), 's',
          `runs ${runs(cpu.agent)} vs ${runs(cpu.direct)}`));
        rows.push(row(`agent upgrade ${label} from a shell, CPU (median of ${rounds})`, 'the same install as the daemon runs it', median(cpu.shell), median(cpu.agent), 's',
          `node without the daemon's ${agentInstallNodeFlags.join(' ')} (it costs start-up); wall ${median(times.shell).toFixed(2)} s; runs ${runs(cpu.shell)} vs ${runs(cpu.agent)}`));
        rows.push(signer === undefined
          ? row(`agent upgrade ${label} vs RAUC`, raucLabel, agent, Number.NaN, 's', `not run: missing ${raucMissing.join(', ')} (scripts/install-deps.sh)`)
          : row(`agent upgrade ${label} vs RAUC (median of ${rounds})`, raucLabel, agent, median(times.rauc), 's',
            `RAUC does not read the slot back nor switch a boot loader (noop); runs ${runs(times.agent)} vs ${runs(times.rauc)}`));
      } finally {
        await rauc?.close();
        await rm(join(dir, `rauc-${size}`), { recursive: true, force: true });
      }
    }
    const small = rss['164 MiB'];
    const large = rss['1 GiB'];
    if (small !== undefined && large !== undefined) {
      rows.push(row('peak RSS agent upgrade 1 GiB', 'same on 164 MiB', large, small, 'MiB', `node process ${large.toFixed(0)} MiB (goal < 150); ~1 = flat`));
    }
    return rows;
  } finally {
    await server.close();
    await rm(dir, { recursive: true, force: true });
  }
};
