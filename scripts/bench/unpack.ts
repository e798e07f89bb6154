/**
 * Unpack speed: a ~500 MB OCI archive of four plain tar layers (a whiteout and an opaque directory
 * in the last) staged as a root filesystem source, against `tar -x` of the flattened tree it
 * becomes, in a shell of its own (run-floor.ts; the floor: one pass, no digests, no metadata list).
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

async function writeOciLayout(dir: string, sample: Buffer): Promise<void> {
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
}

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-unpack-'));
  try {
    const layout = join(dir, 'layout');
    await writeOciLayout(layout, await loadBinarySample());
    const archive = join(dir, 'image.oci.tar');
    await execa('tar', ['-cf', archive, '-C', layout, '.']);
    const { size } = await import('node:fs/promises').then((fs) => fs.stat(archive));
    const rounds = 3;
    const ours: number[] = [];
    const floor: number[] = [];
    const flat = join(dir, 'flat.tar');
    for (let i = 0; i < rounds; i++) {
      const stage = async () => {
        const root = join(dir, `ours-${i}`);
        ours.push((await timeIt(() => stageSource({ type: 'oci', path: archive, ref: undefined }, root, { work: join(dir, `work-${i}`) }))).seconds);
        // the floor extracts what kubeos staged, flattened once by tar -c
        if (i === 0) await execa('tar', ['-cf', flat, '-C', root, '.']);
      };
      const extract = async () => {
        floor.push(await runFloor('mkdir "$2"\ntar -xf "$1" -C "$2"', [flat, join(dir, `floor-${i}`)]));
      };
      // the first round stages first: the floor's input is made from its output
      if (i % 2 === 0) { await stage(); await extract(); } else { await extract(); await stage(); }
    }
    return [row(`unpack a ${Math.round(size / MiB)} MiB OCI archive (${layerCount} layers, digests checked, median of ${rounds})`, 'floor: tar -xf of the flattened tree, in a shell', median(ours), median(floor), 's',
      `runs ${runs(ours)} vs ${runs(floor)}`)];
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
