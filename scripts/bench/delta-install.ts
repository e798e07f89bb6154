/**
 * Delta installs (issue 13's bench): for two updates, bytes received and install wall time of the
 * full bundle, the kubeos delta and casync, from the same server in the same run (install-pair.ts),
 * then where the delta's bytes and seconds go (delta-causes.ts).
 *   small  a 1 GiB root (images/minimal and real files copied from this machine's /usr/lib, built
 *          in the debian layout's 1 GiB slot) and the same with one incompressible 10 MiB file
 *          added, at the same version: at the next one the builder's new filesystem UUID changes
 *          the metadata_csum of every inode and directory block (~150 MiB of chunks here, casync
 *          alike), which is no longer "one file added"; `--next-version` measures that instead
 *   large  images/debian built from bookworm, then the same definition from trixie (its kernel is
 *          the host's, the same in both: what changes is the Debian userland)
 * Goals: delta bytes under casync's on both; within 1.1x of the added file plus the signed index
 * on the small one; a delta install never slower than the full install of the same update.
 * `--no-debian` leaves the large update out (it needs Debian's archive or the mmdebstrap cache),
 * `--no-small` the small one.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { copyFile, lstat, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { buildImage } from '../../builder/build/build-image.js';
import { requireTools } from '../../runtime/core/exec.js';
import { maxDeltaShare, measureCauses, zstdLevel, type DeltaCauses } from './delta-causes.js';
import { installPair, type PairResult } from './install-pair.js';
import { median, MiB, row, runs, type Bench, type BenchRow } from './measure.js';

const epoch = 1_700_000_000;
const rounds = 3;
const addedSize = 10 * MiB;
const fillerBytes = 720 * MiB;
const nextVersion = process.argv.includes('--next-version');
const withDebian = !process.argv.includes('--no-debian');
const withSmall = !process.argv.includes('--no-small');

/** Real files (executables, libraries, data) in sorted order, up to `bytes`, under usr/lib/bench-filler of `out`. */
async function copyFiller(out: string, bytes: number): Promise<void> {
  let total = 0;
  const walk = async (from: string): Promise<void> => {
    for (const name of (await readdir(from)).sort()) {
      if (total >= bytes) return;
      const path = join(from, name);
      const info = await lstat(path).catch(() => undefined);
      if (info?.isDirectory()) await walk(path);
      else if (info?.isFile() && info.size <= 32 * MiB) {
        const to = join(out, 'usr/lib/bench-filler', relative('/usr/lib', path));
        await mkdir(dirname(to), { recursive: true });
        if (await copyFile(path, to).then(() => true, () => false)) total += info.size;
      }
    }
  };
  await walk('/usr/lib');
}

/** An image definition in `dir`: `source`'s image.json with `changes` and these extra file trees laid over its own. */
async function defineImage(dir: string, source: string, changes: (definition: Record<string, any>) => void, extra: string[]): Promise<string> {
  const definition = JSON.parse(await readFile(join(source, 'image.json'), 'utf8')) as Record<string, any>;
  delete definition['$schema'];
  changes(definition);
  await mkdir(dir, { recursive: true });
  definition['files'] = [relative(dir, join(source, 'rootfs')), ...extra.map((e) => relative(dir, e))];
  await writeFile(join(dir, 'image.json'), JSON.stringify(definition, null, 2));
  return dir;
}

async function build(dir: string, name: string, definition: string, layout?: string): Promise<string> {
  const out = join(dir, name);
  await buildImage({ image: definition, out, sourceDateEpoch: epoch, ...(layout === undefined ? {} : { layout }) });
  return join(out, 'rootfs.img');
}

function pairRows(label: string, pair: PairResult, changed?: { bytes: number; what: string }): BenchRow[] {
  const { full, delta, casync } = pair.ways;
  const t = delta.transfer;
  const how = t?.mode === 'delta' ? `${t.fetchedChunks} chunks fetched (${t.packedChunks ?? 0} from the pack; ${t.requests ?? '?'} requests in all; seed index ${t.seedIndex ?? '?'}), ${t.bundleBytes} bytes of the bundle` : `the agent took the full bundle: ${t?.reason ?? t?.fallback?.message ?? '?'}`;
  const rows = [
    row(`delta-install (${label}): bytes, kubeos delta`, 'casync extract --seed (.caibx + chunks, from the server log)', delta.bytes / MiB, casync.bytes / MiB, 'MiB',
      `goal < 1; ${how}; server log: ${delta.logged.requests} GETs, ${delta.logged.fileBytes} chunk bytes; casync ${casync.logged.requests} GETs, .caibx ${pair.caibx.bytes} bytes`),
    row(`delta-install (${label}): bytes, kubeos delta`, 'the full bundle (agent transfer report)', delta.bytes / MiB, full.bytes / MiB, 'MiB'),
    row(`delta-install (${label}): bytes, casync`, 'the full bundle', casync.bytes / MiB, full.bytes / MiB, 'MiB'),
  ];
  if (changed !== undefined) {
    rows.push(row(`delta-install (${label}): bytes, kubeos delta`, changed.what, delta.bytes / MiB, changed.bytes / MiB, 'MiB', 'goal <= 1.1'));
  }
  rows.push(
    row(`delta-install (${label}): install, kubeos delta (median of ${rounds})`, 'full install of the same update', median(delta.seconds), median(full.seconds), 's',
      `goal <= 1; runs ${runs(delta.seconds)} vs ${runs(full.seconds)}; both verify, write, sync and read back the 1 GiB slot`),
    row(`delta-install (${label}): install, casync extract --seed + sync (median of ${rounds})`, 'full install of the same update', median(casync.seconds), median(full.seconds), 's',
      `runs ${runs(casync.seconds)}; casync neither verifies a signature nor reads the slot back`),
  );
  return rows;
}

function causeRows(label: string, pair: PairResult, c: DeltaCauses): BenchRow[] {
  const deltaSeconds = median(pair.ways.delta.seconds);
  const p = (name: string) => `delta-install (${label}) cause: ${name}`;
  return [
    row(p('bundle bytes read past its header'), 'the header (tar headers, manifest with the index, signature)', c.readAheadBytes / MiB, c.headerBytes / MiB, 'MiB', `${c.readAheadBytes} of ${pair.ways.delta.transfer?.bundleBytes ?? '?'} bundle bytes`),
    row(p('chunk index as the host fetches it (index object)'), 'casync\'s .caibx of the same image', c.index.objectBytes / MiB, pair.caibx.bytes / MiB, 'MiB',
      `${c.index.chunks} chunks; as inline JSON it would be ${c.index.jsonBytes} bytes; manifest ${c.manifestBytes} bytes, ${c.index.manifestZstd19} at zstd -19`),
    row(p('chunks to fetch, compressed as stored (zstd -' + String(zstdLevel) + ', one frame each)'), 'the same chunks at zstd -19, one frame each', c.store.compressed / MiB, c.store.zstd19 / MiB, 'MiB',
      `${c.store.chunks} distinct chunks, ${(c.plan.fetchBytes / MiB).toFixed(2)} MiB raw; -19 took ${c.store.zstd19Seconds.toFixed(1)} s`),
    row(p('chunks fetched again (repeated in the image)'), 'the distinct chunks fetched', c.repeated.compressed / MiB, c.store.compressed / MiB, 'MiB', `${c.repeated.chunks} repeats, ${c.repeated.bytes} bytes raw`),
    row(p('share of the image to fetch'), `the agent's limit (plan-delta.ts maxDeltaShare)`, c.plan.share, maxDeltaShare, 'x', c.plan.refused === undefined ? 'delta allowed' : `refused: ${c.plan.refused}`),
    row(p('indexing the booted slot (seed) before any fetch'), 'the delta install', c.seedIndexSeconds, deltaSeconds, 's', 'what a host with no index of its slot adds before its first fetch (in the bench process, slot in the page cache); the bench hosts have the one `kubeos build` stages on persist'),
  ];
}

/** The same incompressible bytes in every run (AES-256-CTR of zeros under a fixed key). */
function addedBytes(): Buffer {
  return createCipheriv('aes-256-ctr', createHash('sha256').update('kubeos-bench-delta-install').digest(), Buffer.alloc(16)).update(Buffer.alloc(addedSize));
}

/** The small update: one incompressible 10 MiB file added to a 1 GiB root. */
async function measureSmall(dir: string, say: (text: string) => void): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const small = join(dir, 'small');
  const filler = join(small, 'filler');
  await copyFiller(filler, fillerBytes);
  const added = join(small, 'added');
  await mkdir(join(added, 'usr/share/kubeos-delta'), { recursive: true });
  await writeFile(join(added, 'usr/share/kubeos-delta/added.bin'), addedBytes());
  const minimal = resolve('images/minimal');
  say(`building the 1 GiB root twice (images/minimal + filler; + one 10 MiB file${nextVersion ? ' at the next version' : ''})`);
  const oldSmall = await build(small, 'old', await defineImage(join(small, 'def-old'), minimal, (d) => { d['version'] = '1.0.0'; }, [filler]), 'debian');
  const newSmall = await build(small, 'new', await defineImage(join(small, 'def-new'), minimal, (d) => { d['version'] = nextVersion ? '1.0.1' : '1.0.0'; }, [filler, added]), 'debian');
  await rm(filler, { recursive: true, force: true });
  const smallPair = await installPair(small, oldSmall, newSmall, { rounds, epoch, say });
  const smallCauses = await measureCauses(small, oldSmall, smallPair);
  // the signed index is in the bundle's header (inline) or a stored object of its own (received whole)
  const header = smallCauses.headerBytes + (smallPair.ways.delta.transfer?.indexBytes ?? 0);
  rows.push(...pairRows(`one 10 MiB file added to a 1 GiB root${nextVersion ? ', next version' : ''}`, smallPair, { bytes: addedSize + header, what: `the added file + the bundle header and the signed index (${header} bytes)` }));
  rows.push(...causeRows('small', smallPair, smallCauses));
  // the large update may fail (Debian's archive unreachable): what the small one measured is kept
  say(`small update measured:\n${rows.map((r) => JSON.stringify(r)).join('\n')}`);
  await rm(small, { recursive: true, force: true });
  return rows;
}


export const bench: Bench = async () => {
  await requireTools(['casync', 'zstd', 'busybox', 'mke2fs', 'mmdebstrap', 'sha256sum']);
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-delta-install-'));
  const say = (text: string) => process.stderr.write(`bench: delta-install: ${text}\n`);
  const rows: BenchRow[] = [];
  try {
    if (withSmall) rows.push(...(await measureSmall(dir, say)));
    if (!withDebian) return rows;

    const large = join(dir, 'large');
    const debian = resolve('images/debian');
    say('building images/debian from bookworm and from trixie (mmdebstrap roots cached in ~/.cache/kubeos/rootfs)');
    const oldLarge = await build(large, 'old', await defineImage(join(large, 'def-old'), debian, (d) => { d['version'] = '1.0.0'; }, []));
    const newLarge = await build(large, 'new', await defineImage(join(large, 'def-new'), debian, (d) => { d['version'] = '2.0.0'; d['rootfs'].suite = 'trixie'; }, []));
    const largePair = await installPair(large, oldLarge, newLarge, { rounds, epoch, say });
    rows.push(...pairRows('images/debian bookworm -> trixie', largePair));
    rows.push(...causeRows('large', largePair, await measureCauses(large, oldLarge, largePair)));
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
