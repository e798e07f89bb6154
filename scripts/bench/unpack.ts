/**
 * Unpack speed: a ~500 MB OCI archive of four plain tar layers (a whiteout and an opaque directory
 * in the last) staged as a root filesystem source, against two floors, each `tar -x` in a shell
 * of its own (run-floor.ts; one pass, no digests, no metadata list):
 * - the issue's: `tar -x` of the same layers, one after another, into one directory (it writes
 *   what the last layer removes, and does not remove it);
 * - a stricter one: `tar -x` of the flattened tree the layers become (what kubeos writes, since
 *   it leaves out what a later layer removes).
 * Alternating runs, medians. No run's tree is removed before the last run: for a minute after
 * thousands of files are deleted, ext4 looks at each recently deleted inode again on every create
 * (recently_deleted() in ialloc.c: most of the system time, perf showed), and the runs grew
 * 2.2 s -> 6.6 s for tar alone, each after the one before was removed.
 */
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { execa } from 'execa';
import * as tar from 'tar-stream';
import { stageSource } from '../../builder/source/stage-source.js';
import { loadBinarySample, median, MiB, row, runs, timeIt, type Bench } from './measure.js';
import { runFloor } from './run-floor.js';

const layerCount = 4;
const bigPerLayer = 100;
const smallPerLayer = 1600;

async function writeLayer(file: string, index: number, sample: Buffer): Promise<{ digest: string; size: number }> {
  const pack = tar.pack();
  const hash = createHash('sha256');
  let size = 0;
  const written = pipeline(pack, async function* (source: AsyncIterable<unknown>) {
    for await (const part of source) {
      const chunk = part as Buffer;
      hash.update(chunk);
      size += chunk.length;
      yield chunk;
    }
  }, createWriteStream(file));
  const entry = async (name: string, data: Buffer, mode = 0o644) => pipeline(Readable.from([data]), pack.entry({ name, size: data.length, mode, mtime: new Date(1_650_000_000_000) }));
  if (index === layerCount - 1) {
    await entry('layer0/.wh.big-0', Buffer.alloc(0));
    await entry('layer1/.wh..wh..opq', Buffer.alloc(0));
  }
  for (let i = 0; i < bigPerLayer; i++) {
    const at = (i * 97 * 1024) % (sample.length - MiB);
    await entry(`layer${index}/big-${i}`, i % 2 === 0 ? randomBytes(MiB) : sample.subarray(at, at + MiB), 0o755);
  }
  for (let i = 0; i < smallPerLayer; i++) await entry(`layer${index}/d${i % 40}/small-${i}`, randomBytes(16 * 1024));
  pack.finalize();
  await written;
  return { digest: `sha256:${hash.digest('hex')}`, size };
}

/** The layer files, in manifest order. */
async function writeOciLayout(dir: string, sample: Buffer): Promise<string[]> {
  await mkdir(join(dir, 'blobs/sha256'), { recursive: true });
  const layers = [];
  for (let i = 0; i < layerCount; i++) {
    const tmp = join(dir, `layer-${i}.tmp`);
    const { digest, size } = await writeLayer(tmp, i, sample);
    await execa('mv', [tmp, join(dir, 'blobs/sha256', digest.slice(7))]);
    layers.push({ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest, size });
  }
  const blob = async (data: string) => {
    const digest = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    await pipeline(Readable.from([data]), createWriteStream(join(dir, 'blobs/sha256', digest.slice(7))));
    return { digest, size: Buffer.byteLength(data) };
  };
  const config = await blob(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: layers.map((l) => l.digest) } }));
  const manifest = await blob(JSON.stringify({ schemaVersion: 2, config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers }));
  await pipeline(Readable.from([JSON.stringify({ schemaVersion: 2, manifests: [{ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest }] })]), createWriteStream(join(dir, 'index.json')));
  await pipeline(Readable.from(['{"imageLayoutVersion":"1.0.0"}']), createWriteStream(join(dir, 'oci-layout')));
  return layers.map((layer) => join(dir, 'blobs/sha256', layer.digest.slice(7)));
}

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-unpack-'));
  try {
    const layout = join(dir, 'layout');
    const layerFiles = await writeOciLayout(layout, await loadBinarySample());
    const archive = join(dir, 'image.oci.tar');
    await execa('tar', ['-cf', archive, '-C', layout, '.']);
    const { size } = await import('node:fs/promises').then((fs) => fs.stat(archive));
    // five: the page cache of this VM swings both sides by 2x between runs
    const rounds = 5;
    const ours: number[] = [];
    const layered: number[] = [];
    const flattened: number[] = [];
    const flat = join(dir, 'flat.tar');
    for (let i = 0; i < rounds; i++) {
      const stage = async () => {
        const root = join(dir, `ours-${i}`);
        ours.push((await timeIt(() => stageSource({ type: 'oci', path: archive, ref: undefined }, root, { work: join(dir, `work-${i}`) }))).seconds);
        // the flattened floor extracts what kubeos staged, made into one tar once
        if (i === 0) await execa('tar', ['-cf', flat, '-C', root, '.']);
      };
      const extractLayers = async () => {
        layered.push(await runFloor('mkdir "$1"\nto="$1"\nshift\nfor layer in "$@"; do tar -xf "$layer" -C "$to"; done', [join(dir, `layers-${i}`), ...layerFiles]));
      };
      const extractFlat = async () => {
        flattened.push(await runFloor('mkdir "$2"\ntar -xf "$1" -C "$2"', [flat, join(dir, `flat-${i}`)]));
      };
      // the first round stages first: the flattened floor's input is made from its output
      const order = i % 2 === 0 ? [stage, extractLayers, extractFlat] : [extractFlat, extractLayers, stage];
      for (const step of order) await step();
    }
    const name = `unpack a ${Math.round(size / MiB)} MiB OCI archive (${layerCount} layers, digests checked, median of ${rounds})`;
    return [
      row(name, 'floor: tar -xf of each layer in turn, in a shell', median(ours), median(layered), 's', `runs ${runs(ours)} vs ${runs(layered)}`),
      row(`${name}, stricter floor`, 'floor: tar -xf of the flattened tree (what kubeos writes), in a shell', median(ours), median(flattened), 's', `runs ${runs(ours)} vs ${runs(flattened)}`),
    ];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
