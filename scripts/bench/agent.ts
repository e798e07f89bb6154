/**
 * Installing an update: `kubeos agent upgrade` from a server on 127.0.0.1 into a file-backed slot
 * (download, verify every chunk, decompress, write, sync, read back, switch the boot environment)
 * against the floor of the same bytes through `curl | zstd -d | dd`; and the agent's peak RSS on a
 * 1 GiB image against a 64 MiB one (flat = ratio ~1; the goal is under 150 MiB).
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm, stat, truncate, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import * as tar from 'tar-stream';
import { createBundle } from '../../builder/bundle/create-bundle.js';
import { bootEnvToGrub, initialBootEnv } from '../../runtime/core/boot-env.js';
import { payloadMember } from '../../runtime/core/bundle/manifest.js';
import { generateKeyPair, parsePrivateKey } from '../../runtime/core/crypto/keys.js';
import { encodeGrubEnv } from '../../runtime/core/grubenv.js';
import { loadBinarySample, MiB, row, runChild, timeIt, writeImage, type Bench, type BenchRow } from './measure.js';

const child = fileURLToPath(new URL('./agent-child.js', import.meta.url));
const rounds = 3;

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? Number.NaN;
}

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

async function makeHost(dir: string, slotSize: number, pubPath: string): Promise<{ config: string; slotB: string }> {
  await mkdir(dir, { recursive: true });
  const slotA = join(dir, 'slotA.img');
  const slotB = join(dir, 'slotB.img');
  for (const slot of [slotA, slotB]) {
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

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-agent-'));
  const server = createServer((req, res) => {
    const file = join(dir, 'www', new URL(req.url ?? '/', 'http://x').pathname.replace(/[^A-Za-z0-9._-]/g, ''));
    stat(file).then((info) => {
      res.writeHead(200, { 'content-length': String(info.size) });
      createReadStream(file).pipe(res);
    }, () => res.writeHead(404).end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const pair = generateKeyPair();
    const pub = join(dir, 'signing.pub.pem');
    await writeFile(pub, pair.publicPem);
    await mkdir(join(dir, 'www'));
    const sample = await loadBinarySample();
    const rows: BenchRow[] = [];
    const rss: Record<string, number> = {};
    for (const [label, size] of [['64 MiB', 64 * MiB], ['1 GiB', 1024 * MiB]] as const) {
      const image = join(dir, 'rootfs.img');
      await writeImage(image, size, sample);
      const bundle = join(dir, 'www', 'bundle.kubeos');
      await createBundle({ rootfs: image, out: bundle, privateKey: parsePrivateKey(pair.privatePem), sourceDateEpoch: 0, metadata: { os: 'kubeos', version: '2.0.0', arch: 'x86_64', compatible: 'bench', kernelVersion: '0' } });
      await rm(image);
      await extractPayload(bundle, join(dir, 'www', 'payload.zst'));

      // alternating runs, medians: on a shared 2-core machine single runs swing by a third
      const floorTimes: number[] = [];
      const agentTimes: number[] = [];
      for (let round = 0; round < rounds; round++) {
        const floorHost = await makeHost(join(dir, `floor-${size}`), size, pub);
        // buffer: false, or execa would also keep every byte that flows through the pipe
        const floor = await timeIt(() => execa('curl', ['-sf', `${base}/payload.zst`], { buffer: false })
          .pipe('zstd', ['-d', '-c', '-q'], { buffer: false })
          .pipe('dd', [`of=${floorHost.slotB}`, 'bs=4M', 'conv=notrunc,fdatasync', 'status=none'], { buffer: false }));
        floorTimes.push(floor.seconds);
        await rm(join(dir, `floor-${size}`), { recursive: true, force: true });
        const host = await makeHost(join(dir, `agent-${size}`), size, pub);
        const agent = await runChild(child, [host.config, `${base}/bundle.kubeos`]);
        agentTimes.push(agent.seconds);
        rss[label] = Math.max(rss[label] ?? 0, agent.maxRssMiB);
        await rm(join(dir, `agent-${size}`), { recursive: true, force: true });
      }
      rows.push(row(`agent upgrade ${label} from 127.0.0.1 into a file slot (median of ${rounds})`, 'curl | zstd -d | dd of the same payload', median(agentTimes), median(floorTimes), 's',
        `goal <= 1.25x; the agent also verifies every chunk and reads the slot back; runs ${agentTimes.map((v) => v.toFixed(2)).join('/')} vs ${floorTimes.map((v) => v.toFixed(2)).join('/')}`));
    }
    const small = rss['64 MiB'];
    const large = rss['1 GiB'];
    if (small !== undefined && large !== undefined) {
      rows.push(row('peak RSS agent upgrade 1 GiB', 'same on 64 MiB', large, small, 'MiB', `node process ${large.toFixed(0)} MiB (goal < 150); ~1 = flat`));
    }
    return rows;
  } finally {
    server.closeAllConnections();
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
};
