/**
 * The image of a delta install as one stream, in order: each chunk of the signed index read from
 * a seed (the booted slot, or what an interrupted install left in the standby), fetched from the
 * chunk store, or repeated from an earlier fetch, and released only after its sha256 matched the
 * index. A seed chunk that no longer matches (the slot changed since it was indexed) is fetched
 * instead. At the end the whole image must have the signed `uncompressedSha256`, so an
 * index that disagreed with the image would fail here, before anything is made bootable.
 *
 * The booted slot is only ever read. The standby is read only at or after the offset being
 * produced, which the writer (behind this stream) has not reached: plan-delta.ts keeps to that.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { pipeline, Readable, type TransformCallback } from 'node:stream';
import { createHash } from 'node:crypto';
import { OffThreadHashTap } from '../core/bundle/stream-hasher.js';
import { KubeosError } from '../core/errors.js';
import { decodePackMap, packPaths } from '../core/bundle/chunk-pack.js';
import { ChunkFetcher, type PackFrame } from './fetch-chunks.js';
import type { SlotTarget } from './open-slot.js';
import type { DeltaPlan, SeedSlot } from './plan-delta.js';

export interface DeltaSourceOptions {
  /** The booted slot, and the standby slot when the plan takes chunks an interrupted install left there. */
  seeds: { booted: SlotTarget; standby?: SlotTarget | undefined };
  plan: DeltaPlan;
  /** URL of the chunk store, ending in `/`. */
  store: string;
  uncompressedSha256: string;
  signal?: AbortSignal | undefined;
  idleMs: number;
  /** Connections to the chunk store. */
  sockets?: number;
}

/** Requests made ahead of the writer: at most this many, covering at most this many bytes of chunks. */
const aheadRequests = 32;
const aheadBytes = 24 << 20;
/** A Range request into the pack covers at most this many bytes of frames. */
const maxRunBytes = 4 << 20;
/**
 * A run is started only with this much of the window free: refilling as each chunk is written
 * would cut the pack into runs of a chunk or two (measured: 3,961 chunks in 973 requests).
 */
const minRunWindow = 8 << 20;

export interface DeltaStats {
  /** Compressed bytes received from the chunk store. */
  fetchedBytes: number;
  fetchedChunks: number;
  reusedBytes: number;
  reusedChunks: number;
  /** Of the reused, chunks the standby held from an interrupted install. */
  resumedBytes: number;
  resumedChunks: number;
  /** Chunks that recur in the image, fetched once and written again from memory. */
  repeatedChunks: number;
  /** zstd processes that decoded the fetched chunks. */
  decoders: number;
  /** Seed chunks that no longer matched when read, and were fetched instead. */
  seedMismatches: number;
  requests: number;
  /** Of the fetched, chunks that came from the release's pack, by runs of Range requests. */
  packedChunks: number;
  /** Why the pack was not used, or a run of it failed and its chunks were fetched one by one. */
  packProblem?: string;
}

export function openDeltaSource(options: DeltaSourceOptions): { stream: Readable; stats: () => DeltaStats } {
  const fetcher = new ChunkFetcher(options.store, { signal: options.signal, idleMs: options.idleMs, sockets: options.sockets ?? 6 });
  const stats: DeltaStats = { fetchedBytes: 0, fetchedChunks: 0, reusedBytes: 0, reusedChunks: 0, resumedBytes: 0, resumedChunks: 0, repeatedChunks: 0, decoders: 0, seedMismatches: 0, requests: 0, packedChunks: 0 };
  const source = Readable.from(produce(options, fetcher, stats), { objectMode: false, highWaterMark: 4 << 20 });
  // destroying the stream the writer reads destroys the source, and the source's error reaches it
  const stream = pipeline(source, new CheckedImage(options.uncompressedSha256), () => {});
  return {
    stream,
    stats: () => ({ ...stats, fetchedBytes: fetcher.fetchedBytes, requests: fetcher.requests, decoders: fetcher.decoder.processes }),
  };
}

interface OpenPack {
  url: string;
  /** Frame of each chunk the pack holds, by the chunk's sha256. */
  frames: Map<string, PackFrame>;
  /** A run failed: the rest is fetched chunk by chunk. */
  broken: boolean;
}

/**
 * The release's pack, when the store has one: its map (a few bytes a chunk) is read first. No map,
 * or one that does not parse, and the chunks are fetched one by one as before.
 */
async function openPack(options: DeltaSourceOptions, fetcher: ChunkFetcher, stats: DeltaStats): Promise<OpenPack | undefined> {
  const { steps } = options.plan;
  const paths = packPaths(options.uncompressedSha256);
  try {
    const bytes = await fetcher.getObject(paths.map, 12 + 8 * steps.length);
    if (bytes === undefined) {
      stats.packProblem = 'the store has no pack for this image';
      return undefined;
    }
    const frames = new Map<string, PackFrame>();
    for (const entry of decodePackMap(bytes, steps.length, `${options.store}${paths.map}`)) {
      const step = steps[entry.position]!;
      frames.set(step.sha256, { sha256: step.sha256, length: step.length, offset: entry.offset, size: entry.size });
    }
    return { url: `${options.store}${paths.pack}`, frames, broken: false };
  } catch (error) {
    options.signal?.throwIfAborted();
    stats.packProblem = `the pack map could not be used: ${(error as Error).message}`;
    return undefined;
  }
}

async function* produce(options: DeltaSourceOptions, fetcher: ChunkFetcher, stats: DeltaStats): AsyncGenerator<Buffer> {
  const { seeds, plan, signal } = options;
  const fetchAt = plan.steps.flatMap((step, i) => (step.from === 'store' ? [i] : []));
  // a fetched chunk that recurs is kept until its last repeat
  const lastUse = new Map<number, number>();
  for (const [i, step] of plan.steps.entries()) if (step.from === 'repeat') lastUse.set(step.step, i);
  const kept = new Map<number, Buffer>();
  const pack = fetchAt.length === 0 ? undefined : await openPack(options, fetcher, stats);
  let nextFetch = 0;
  let aheadLength = 0;
  let requestsAhead = 0;
  const pending = new Map<number, Promise<Buffer>>();
  const fill = () => {
    while (nextFetch < fetchAt.length && requestsAhead < aheadRequests && (pending.size === 0 || aheadLength < aheadBytes)) {
      // a run: the next chunks to fetch whose frames follow one another in the pack
      let frame = pack?.broken === false ? pack.frames.get(plan.steps[fetchAt[nextFetch]!]!.sha256) : undefined;
      if (frame !== undefined && pending.size > 0 && aheadLength > aheadBytes - minRunWindow) break;
      const run = [fetchAt[nextFetch++]!];
      if (frame !== undefined) {
        const frames = [frame];
        let runBytes = frame.size;
        let runLength = plan.steps[run[0]!]!.length;
        while (nextFetch < fetchAt.length && aheadLength + runLength < aheadBytes) {
          const next = plan.steps[fetchAt[nextFetch]!]!;
          const after = pack!.frames.get(next.sha256);
          if (after === undefined || after.offset !== frame.offset + frame.size || runBytes + after.size > maxRunBytes) break;
          run.push(fetchAt[nextFetch++]!);
          frames.push(after);
          frame = after;
          runBytes += after.size;
          runLength += next.length;
        }
        const got = fetcher.getRun(pack!.url, frames);
        requestsAhead++;
        void Promise.allSettled(got).then(() => requestsAhead--);
        run.forEach((i, k) => {
          const step = plan.steps[i]!;
          // a pack that disagrees with the index costs the chunk file, never a wrong byte
          const chunk = got[k]!.then((data) => {
            stats.packedChunks++;
            return data;
          }, (error: unknown) => {
            signal?.throwIfAborted();
            pack!.broken = true;
            stats.packProblem ??= `a run of the pack failed (${(error as Error).message}); its chunks were fetched one by one`;
            return fetcher.get(step.sha256, step.length);
          });
          chunk.catch(() => {});
          pending.set(i, chunk);
          aheadLength += step.length;
        });
        continue;
      }
      const i = run[0]!;
      const step = plan.steps[i]!;
      const got = fetcher.get(step.sha256, step.length);
      requestsAhead++;
      // judged when its turn comes; until then a failure must not count as unhandled
      got.catch(() => {}).finally(() => requestsAhead--);
      pending.set(i, got);
      aheadLength += step.length;
    }
  };
  // a seed is a source like the chunk store: a seed that cannot be read is a delta problem
  // (E_DELTA: the full bundle instead), not a failure of the slot being written
  const seedProblem = (target: SlotTarget, error: unknown) => new KubeosError('E_DELTA', `slot ${target.slot} (${target.path}) cannot be read as the delta's seed: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error, details: { seed: target.path } });
  const handles = new Map<SeedSlot, { target: SlotTarget; handle: FileHandle }>();
  try {
    for (const [name, target] of [['booted', seeds.booted], ['standby', seeds.standby]] as const) {
      if (target === undefined || !plan.steps.some((step) => step.from === 'seed' && step.seed === name)) continue;
      handles.set(name, { target, handle: await open(target.path, 'r').catch((error: unknown) => { throw seedProblem(target, error); }) });
    }
    for (const [i, step] of plan.steps.entries()) {
      signal?.throwIfAborted();
      fill();
      let data: Buffer;
      if (step.from === 'seed') {
        // a read from the page cache and a sha256 of one chunk: cheaper here than shared memory
        // per chunk, whose buffers the garbage collector frees late (twice the RSS, measured)
        const { target, handle } = handles.get(step.seed) ?? { target: seeds.booted, handle: undefined };
        if (handle === undefined) throw new KubeosError('E_DELTA', `the delta plan reads slot ${step.seed}, which was not given`);
        data = Buffer.allocUnsafe(step.length);
        const { bytesRead } = await handle.read(data, 0, step.length, target.offset + step.seedOffset).catch((error: unknown) => {
          throw seedProblem(target, error);
        });
        if (bytesRead === step.length && createHash('sha256').update(data).digest('hex') === step.sha256) {
          stats.reusedBytes += step.length;
          stats.reusedChunks++;
          if (step.seed === 'standby') {
            stats.resumedBytes += step.length;
            stats.resumedChunks++;
          }
        } else {
          stats.seedMismatches++;
          data = await fetcher.get(step.sha256, step.length);
          stats.fetchedChunks++;
        }
      } else if (step.from === 'repeat') {
        const earlier = kept.get(step.step);
        if (earlier === undefined) throw new KubeosError('E_DELTA', `the delta plan repeats chunk ${step.sha256} from step ${step.step}, which was not kept`);
        data = earlier;
        if (lastUse.get(step.step) === i) kept.delete(step.step);
        stats.repeatedChunks++;
      } else {
        data = await pending.get(i)!;
        pending.delete(i);
        aheadLength -= step.length;
        stats.fetchedChunks++;
        if (step.recurs) kept.set(i, data);
      }
      yield data;
    }
  } finally {
    for (const { handle } of handles.values()) await handle.close();
    fetcher.close();
  }
}

/**
 * The image as it streams to the writer, hashed whole on a worker thread: it ends only once that
 * sha256 is the signed `uncompressedSha256`, so an index that disagrees with the image fails the
 * delta before the slot is made bootable.
 */
class CheckedImage extends OffThreadHashTap {
  constructor(private readonly expected: string) {
    super();
  }

  override _flush(callback: TransformCallback): void {
    super._flush((error) => {
      if (error) return callback(error);
      this.digest().then((actual) => {
        if (actual === this.expected) return callback();
        callback(new KubeosError('E_DELTA', `the image assembled from the chunk index has sha256 ${actual}, the manifest says ${this.expected}`, {
          hint: 'the bundle\'s signed index disagrees with its image: the host installs the full bundle instead',
          details: { expected: this.expected, actual },
        }));
      }, (failure: unknown) => callback(failure as Error));
    });
  }
}
