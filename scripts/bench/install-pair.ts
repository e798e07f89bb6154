/**
 * One update OLD -> NEW installed three ways from the same `busybox httpd` (a process apart, its
 * `-vv` log kept), each into a fresh file-backed standby slot whose booted slot A is OLD. The store
 * holds OLD's chunks (OLD was published before), then NEW's new ones and their pack; the agent's
 * hosts are fresh from a disk `kubeos build` made of OLD: their state dir is what the builder stages
 * on persist (stage-factory-state.ts: state.json names OLD in slot A, OLD's index beside it), which
 * is also what the agent leaves once it installed OLD. So the delta does not read slot A to index
 * it; delta-causes.ts times what a host without that index would add.
 *   full    `upgrade` of NEW's bundle from a URL outside bundles/, so the agent has no chunk store
 *   delta   `upgrade` of the same bundle from bundles/<sha256>.kubeos, chunks/ beside it
 *   casync  `casync extract --seed=OLD` of NEW's .caibx from the same server (casync-http), then
 *           `sync` of the written file, timed inside its shell like the bench floors
 * Runs alternate, each round starting with another one. Bytes come from the agent's transfer
 * report and, for every GET but the bundle's (cut short by the agent) and the pack's (ranges), from
 * the server log: each other logged URL is a whole file of the served folder.
 */
import { createReadStream } from 'node:fs';
import { cp, link, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createBundle, type CreatedBundle } from '../../builder/bundle/create-bundle.js';
import { factoryStateDir, stageFactoryState } from '../../builder/build/stage-factory-state.js';
import { writeBundleChunks } from '../../builder/bundle/write-bundle-chunks.js';
import { writeChunkFiles } from '../../builder/bundle/write-chunk-files.js';
import { writeChunkPack } from '../../builder/bundle/write-chunk-pack.js';
import type { TransferReport } from '../../runtime/agent/upgrade.js';
import { readUnsignedBundle } from '../../runtime/core/bundle/read-bundle.js';
import { defaultCdcRule, indexStream } from '../../runtime/core/bundle/chunk-index.js';
import { bundlePath } from '../../runtime/core/channel/layout.js';
import { generateKeyPair, parsePrivateKey } from '../../runtime/core/crypto/keys.js';
import { run } from '../../runtime/core/exec.js';
import { makeHost } from './agent.js';
import { runChild } from './measure.js';
import { runFloor } from './run-floor.js';
import { serveStatic } from './serve-static.js';

const child = fileURLToPath(new URL('./agent-child.js', import.meta.url));
const ways = ['full', 'delta', 'casync'] as const;
export type Way = (typeof ways)[number];

export interface WayResult {
  seconds: number[];
  /** Bytes received, from the last run (every run fetches the same). */
  bytes: number;
  /** What the server log counts for that run: GETs and the bytes of every file but the bundle. */
  logged: { requests: number; fileBytes: number };
  transfer?: TransferReport;
}

export interface PairResult {
  bundle: CreatedBundle;
  /** Folder served: bundles/, chunks/, castr/ (casync's store), new.caibx. */
  www: string;
  /** Bytes of NEW's .caibx, and its chunk count. */
  caibx: { bytes: number; chunks: number };
  ways: Record<Way, WayResult>;
}

/** Every `url:` the server logged from `from` on, as paths under the served folder. */
function loggedUrls(log: string, from: number): string[] {
  return log.slice(from).split('\n').flatMap((line) => {
    const match = /: url:(\/\S*)$/.exec(line);
    return match?.[1] === undefined ? [] : [decodeURIComponent(match[1]).replace(/^\//, '')];
  });
}

export async function installPair(dir: string, oldImage: string, newImage: string, options: { rounds: number; epoch: number; say: (text: string) => void }): Promise<PairResult> {
  const { say } = options;
  const www = join(dir, 'www');
  await mkdir(join(www, 'bundles'), { recursive: true });
  await mkdir(join(www, 'full'), { recursive: true });
  const pair = generateKeyPair();
  const pub = join(dir, 'signing.pub.pem');
  await writeFile(pub, pair.publicPem);

  say('bundle create (format 2) of NEW, its chunk store, casync make of NEW');
  const made = await createBundle({ rootfs: newImage, out: join(dir, 'new.kubeos'), privateKey: parsePrivateKey(pair.privatePem), sourceDateEpoch: options.epoch, metadata: { os: 'kubeos', version: '2.0.0', arch: 'x86_64', compatible: 'bench', kernelVersion: '0' } });
  const published = join(www, bundlePath(made.sha256));
  await rename(made.path, published);
  const bundle = { ...made, path: published };
  // the same file under a path with no chunk store beside it: the agent installs it in full
  await link(published, join(www, 'full', 'bundle.kubeos'));
  say('OLD\'s chunk store (as published before NEW), then NEW\'s new chunks, its index object and their pack');
  const oldChunks = await indexStream(createReadStream(oldImage));
  const oldIndex = { rule: defaultCdcRule, chunks: oldChunks.map((c): [number, string] => [c.length, c.sha256]) };
  await writeChunkFiles(createReadStream(oldImage), oldIndex, join(www, 'chunks'));
  // persist as `kubeos build` of OLD stages it: the host's first update, straight from the disk
  const factory = join(dir, 'factory-persist');
  await rm(factory, { recursive: true, force: true });
  const staged = await stageFactoryState(factory, oldImage, '1.0.0', options.epoch);
  if (staged.state.chunks !== oldIndex.chunks.length) throw new Error(`the factory index of OLD has ${staged.state.chunks} chunks, the store's ${oldIndex.chunks.length}`);
  const { manifest, payload } = await readUnsignedBundle(createReadStream(published));
  const { written, index } = await writeBundleChunks(payload, manifest, join(www, 'chunks'));
  await writeChunkPack(join(www, 'chunks'), index, written, bundle.manifest.payload.uncompressedSha256);
  const caibx = join(www, 'new.caibx');
  await run('casync', ['make', `--store=${join(www, 'castr')}`, caibx, newImage], { timeoutMs: 20 * 60_000 });
  const caibxBytes = (await stat(caibx)).size;

  const log = join(dir, 'httpd.log');
  await writeFile(log, '');
  const server = await serveStatic(www, { log });
  const size = (await stat(newImage)).size;
  const blank = (): WayResult => ({ seconds: [], bytes: 0, logged: { requests: 0, fileBytes: 0 } });
  const results: Record<Way, WayResult> = { full: blank(), delta: blank(), casync: blank() };
  try {
    const once = async (way: Way) => {
      const host = join(dir, `host-${way}`);
      await rm(host, { recursive: true, force: true });
      const { config, slotB } = await makeHost(host, size, pub, oldImage);
      if (way !== 'casync') {
        // the agent's state dir as a disk fresh from `kubeos build` holds it on persist
        await cp(join(factory, factoryStateDir), join(host, 'state'), { recursive: true });
      }
      const before = (await readFile(log, 'utf8')).length;
      const result = results[way];
      if (way === 'casync') {
        await rm(slotB, { force: true });
        result.seconds.push(await runFloor('casync extract --seed="$1" --store="$2" "$3" "$4"\nsync "$4"', [oldImage, `${server.base}/castr`, `${server.base}/new.caibx`, slotB]));
      } else {
        const url = way === 'full' ? `${server.base}/full/bundle.kubeos` : `${server.base}/${bundlePath(bundle.sha256)}`;
        const got = await runChild<{ seconds: number; maxRssMiB: number; transfer?: TransferReport }>(child, [config, url]);
        // a delta the agent refuses (or gives up) is a full install: recorded as such, not hidden
        if (got.transfer === undefined || (way === 'full' && got.transfer.mode !== 'full')) throw new Error(`the ${way} install went ${got.transfer?.mode ?? 'nowhere'}`);
        result.seconds.push(got.seconds);
        result.transfer = got.transfer;
        result.bytes = got.transfer.fetchedBytes;
      }
      // the slot written must be NEW, whichever way wrote it
      const { stdout } = await run('sha256sum', [slotB], { timeoutMs: 10 * 60_000 });
      if (stdout.split(' ')[0] !== bundle.manifest.payload.uncompressedSha256) throw new Error(`${way}: slot B is not NEW after the install`);
      // busybox logs a request as it starts answering it: by the time the client is done, it is in
      const urls = loggedUrls(await readFile(log, 'utf8'), before);
      let fileBytes = 0;
      for (const path of urls) if (!path.startsWith('bundles/') && !path.startsWith('full/') && !path.endsWith('.pack')) fileBytes += (await stat(join(www, path))).size;
      result.logged = { requests: urls.length, fileBytes };
      if (way === 'casync') result.bytes = fileBytes;
      await rm(host, { recursive: true, force: true });
    };
    // alternating runs, medians: on a shared 2-core machine single runs swing by a third
    for (let round = 0; round < options.rounds; round++) {
      for (let i = 0; i < ways.length; i++) {
        const way = ways[(round + i) % ways.length]!;
        say(`round ${round + 1}/${options.rounds}: ${way}`);
        await once(way);
      }
    }
  } finally {
    await server.close();
  }
  return { bundle, www, caibx: { bytes: caibxBytes, chunks: Math.max(0, (caibxBytes - 104) / 40) }, ways: results };
}
