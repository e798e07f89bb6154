/**
 * Delta updates (issue 13): images/minimal built twice by kubeos build, the second with one added
 * file (10 MiB and a bit, incompressible, under usr/share), once at the same version and once at
 * the next (a new filesystem UUID and hash seed, as a real release has). For each pair: bytes of
 * NEW in no chunk of OLD with 64 KiB content-defined chunks (the rule of kubeos bundle diff),
 * fixed 4 MiB (format 1's chunks) and fixed 64 KiB blocks, each against the added file, and
 * against casync (its default 16/64/256 KiB chunks; bytes and compressed store files of the chunks
 * not in OLD's store). Then why fixed blocks lose: the same tree through mke2fs -d with the
 * filesystem geometry held (size and inode count of NEW for both) and the file placed first in
 * mke2fs's sorted walk, where the builds put it (under usr/share: only var/ follows) or last. And the chunker's speed on a 1 GiB image against sha256 alone.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { cp, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { buildImage } from '../../builder/build/build-image.js';
import { normalizeTimes } from '../../builder/rootfs/stage-rootfs.js';
import { diffImages } from '../../builder/bundle/diff-images.js';
import { defaultCdcRule, indexStream, type ChunkRule } from '../../runtime/core/bundle/chunk-index.js';
import { findTool, requireTools, run } from '../../runtime/core/exec.js';
import { MiB, loadBinarySample, row, timeIt, writeImage, type Bench, type BenchRow } from './measure.js';

const epoch = 1_700_000_000;
const addedSize = 10 * MiB + 5000;
const fixed4m: ChunkRule = { kind: 'fixed', size: 4 * MiB };
const fixed64k: ChunkRule = { kind: 'fixed', size: 64 * 1024 };

/** The same incompressible bytes in every run (AES-256-CTR of zeros under a fixed key). */
function addedBytes(): Buffer {
  return createCipheriv('aes-256-ctr', createHash('sha256').update('kubeos-bench-delta').digest(), Buffer.alloc(16)).update(Buffer.alloc(addedSize));
}

/** images/minimal as a definition in `dir`, at `version`, with `extra` (a directory in `dir`) copied over its files. */
async function defineImage(dir: string, version: string, extra: string | undefined): Promise<string> {
  const source = resolve('images/minimal');
  const definition = JSON.parse(await readFile(join(source, 'image.json'), 'utf8')) as Record<string, unknown>;
  delete definition['$schema'];
  const files = [relative(dir, join(source, 'rootfs'))];
  if (extra !== undefined) files.push(extra);
  await mkdir(dir, { recursive: true });
  await writeFile(join(dir, 'image.json'), JSON.stringify({ ...definition, version, files }, null, 2));
  return dir;
}

/** casync's chunks of an image (from its .caibx index: a 48-byte header, a 16-byte table header, 40-byte items, a 40-byte tail). */
async function casyncChunks(dir: string, name: string, image: string): Promise<{ index: Map<string, number>; store: string }> {
  const store = join(dir, `${name}.castr`);
  const caibx = join(dir, `${name}.caibx`);
  await run('casync', ['make', `--store=${store}`, caibx, image], { timeoutMs: 10 * 60_000 });
  const data = await readFile(caibx);
  const index = new Map<string, number>();
  let previous = 0;
  for (let at = 64; at + 40 <= data.length - 40; at += 40) {
    const end = Number(data.readBigUInt64LE(at));
    index.set(data.toString('hex', at + 8, at + 40), end - previous);
    previous = end;
  }
  return { index, store };
}

async function casyncDiff(dir: string, oldImage: string, newImage: string, label: string): Promise<{ bytes: number; stored: number }> {
  const old = await casyncChunks(dir, `${label}-old`, oldImage);
  const fresh = await casyncChunks(dir, `${label}-new`, newImage);
  let bytes = 0;
  let stored = 0;
  for (const [id, length] of fresh.index) {
    if (old.index.has(id)) continue;
    bytes += length;
    stored += (await stat(join(fresh.store, id.slice(0, 4), `${id}.cacnk`))).size;
  }
  return { bytes, stored };
}

async function newBytes(oldImage: string, newImage: string, rule: ChunkRule): Promise<number> {
  return (await diffImages(oldImage, newImage, { rule, compress: false })).missingBytes;
}

/** mke2fs -d as make-ext4.ts runs it, but with size and inode count given: the geometry held. */
async function mkfs(tree: string, file: string, sizeKiB: number, inodes: number): Promise<void> {
  await rm(file, { force: true });
  const uuid = '6b1f2c3d-0000-4000-8000-000000000001';
  await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-I', '256', '-m', '0', '-U', uuid, '-E', `hash_seed=${uuid},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0`, '-O', '^has_journal', '-N', String(inodes), '-d', tree, file, `${sizeKiB}k`], {
    env: { E2FSPROGS_FAKE_TIME: String(epoch) },
  });
}

async function geometry(image: string): Promise<{ blocks: number; inodes: number; inodeBlocksPerGroup: number; reservedGdt: number }> {
  const { stdout } = await run('dumpe2fs', ['-h', image], { timeoutMs: 60_000 });
  const field = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+)`, 'm').exec(stdout)?.[1] ?? Number.NaN);
  return { blocks: field('Block count'), inodes: field('Inode count'), inodeBlocksPerGroup: field('Inode blocks per group'), reservedGdt: field('Reserved GDT blocks') };
}

export const bench: Bench = async () => {
  await requireTools(['mke2fs', 'debugfs', 'dumpe2fs', 'zstd']);
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-delta-'));
  const rows: BenchRow[] = [];
  const say = (text: string) => process.stderr.write(`bench: delta: ${text}\n`);
  try {
    const added = join(dir, 'added', 'usr/share/kubeos-delta/added.bin');
    await mkdir(dirname(added), { recursive: true });
    await writeFile(added, addedBytes());
    const build = async (name: string, version: string, extra: string | undefined) => {
      const out = join(dir, name);
      await buildImage({ image: await defineImage(join(dir, `def-${name}`), version, extra), layout: 'small', out, sourceDateEpoch: epoch });
      return join(out, 'rootfs.img');
    };
    const oldImage = await build('old', '1.0.0', undefined);
    const pairs = [
      { label: 'one file added', image: await build('new-same', '1.0.0', '../added') },
      { label: 'one file added, next version', image: await build('new-next', '1.0.1', '../added') },
    ];
    const [g0, g1] = [await geometry(oldImage), await geometry(pairs[0]!.image)];
    say(`OLD ${g0.blocks} blocks, ${g0.inodes} inodes, ${g0.inodeBlocksPerGroup} inode-table blocks a group, ${g0.reservedGdt} reserved GDT blocks; NEW ${g1.blocks}, ${g1.inodes}, ${g1.inodeBlocksPerGroup}, ${g1.reservedGdt}`);

    const casync = (await findTool('casync')) !== undefined;
    if (!casync) say('casync is not installed (Debian package casync): its rows are left out');
    for (const { label, image } of pairs) {
      const cdc = await diffImages(oldImage, image, { rule: defaultCdcRule });
      const note = `${(cdc.missingBytes / MiB).toFixed(2)} of ${(cdc.bytes / MiB).toFixed(0)} MiB in ${cdc.missingChunks} of ${cdc.chunks} chunks`;
      rows.push(row(`delta (${label}): new bytes, CDC 64 KiB`, 'the added file', cdc.missingBytes / MiB, addedSize / MiB, 'MiB', note));
      for (const [name, rule] of [['fixed 4 MiB', fixed4m], ['fixed 64 KiB', fixed64k]] as const) {
        rows.push(row(`delta (${label}): new bytes, ${name}`, 'the added file', (await newBytes(oldImage, image, rule)) / MiB, addedSize / MiB, 'MiB'));
      }
      const full = cdc.fullBundle?.bytes ?? Number.NaN;
      rows.push(row(`delta (${label}): CDC missing chunks, zstd`, 'the full payload (zstd of NEW)', (cdc.missingCompressed ?? Number.NaN) / MiB, full / MiB, 'MiB'));
      if (casync) {
        const c = await casyncDiff(dir, oldImage, image, label.replace(/\W+/g, '-'));
        rows.push(row(`delta (${label}): new bytes, CDC 64 KiB`, 'casync make (16/64/256 KiB)', cdc.missingBytes / MiB, c.bytes / MiB, 'MiB'));
        rows.push(row(`delta (${label}): CDC missing chunks, zstd`, 'casync store files not in OLD\'s store', (cdc.missingCompressed ?? Number.NaN) / MiB, c.stored / MiB, 'MiB'));
      }
    }

    // why: the same tree with the geometry held, the added file early, in the middle, last
    const tree = join(dir, 'tree');
    await mkdir(tree);
    await run('debugfs', ['-R', `rdump / ${tree}`, oldImage], { timeoutMs: 10 * 60_000 });
    await rm(join(tree, 'lost+found'), { recursive: true, force: true });
    // every time fixed, as the builder does: only the added file may differ between the trees
    await normalizeTimes(tree, epoch);
    const sizeKiB = (g1.blocks * 4096) / 1024;
    const heldOld = join(dir, 'held-old.img');
    await mkfs(tree, heldOld, sizeKiB, g1.inodes);
    const places = [['first', 'bin/0-added.bin'], ['under usr/share, as built', 'usr/share/kubeos-delta/added.bin'], ['last', 'zzz/added.bin']] as const;
    for (const [i, [where, rel]] of places.entries()) {
      const variant = join(dir, `tree-${i}`);
      await cp(tree, variant, { recursive: true, verbatimSymlinks: true });
      await mkdir(dirname(join(variant, rel)), { recursive: true });
      await cp(added, join(variant, rel));
      await normalizeTimes(variant, epoch);
      const image = join(dir, `held-${i}.img`);
      await mkfs(variant, image, sizeKiB, g1.inodes);
      await rm(variant, { recursive: true, force: true });
      const cdc = await newBytes(heldOld, image, defaultCdcRule);
      for (const [name, rule] of [['fixed 4 MiB', fixed4m], ['fixed 64 KiB', fixed64k]] as const) {
        rows.push(row(`delta (geometry held, the file ${where} in the walk): new bytes, ${name}`, 'CDC 64 KiB', (await newBytes(heldOld, image, rule)) / MiB, cdc / MiB, 'MiB'));
      }
    }

    // speed and memory: a 1 GiB image like a filesystem with free space
    const big = join(dir, 'big.img');
    await writeImage(big, 1024 * MiB, await loadBinarySample());
    const rssBefore = process.memoryUsage().rss;
    let rssPeak = rssBefore;
    const sample = () => {
      rssPeak = Math.max(rssPeak, process.memoryUsage().rss);
    };
    const indexed = await timeIt(() => indexStream(createReadStream(big, { highWaterMark: 1 << 20 }), defaultCdcRule, (chunk) => {
      if (chunk.offset % (64 * MiB) < defaultCdcRule.max) sample();
    }));
    const hashed = await timeIt(async () => {
      const hash = createHash('sha256');
      await pipeline(createReadStream(big, { highWaterMark: 1 << 20 }), hash);
    });
    rows.push(row('delta: CDC index of a 1 GiB image (gear hash and sha256 of each chunk)', 'sha256 of the same file', indexed.seconds, hashed.seconds, 's',
      `${(1024 / indexed.seconds).toFixed(0)} MiB/s, ${indexed.value.length} chunks, peak RSS ${(rssPeak / MiB).toFixed(0)} MiB, ${(rssBefore / MiB).toFixed(0)} MiB before`));
    await rm(tree, { recursive: true, force: true });
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
