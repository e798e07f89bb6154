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
import { PackRun } from './read-pack-run.js';
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

/** Chunk-file GETs made ahead of the writer: at most this many, covering at most this many bytes of chunks. */
const aheadRequests = 32;
const aheadBytes = 16 << 20;
/**
 * A run of the pack, one request and one zstd, covers at most this many bytes of frames: a
 * failure mid-run costs a new request for the rest, and a run is read while the next one starts.
 */
const maxRunBytes = 64 << 20;
/** A run that fails is restarted after the failing chunk this many times; then its chunks come from their files. */
const maxRunRestarts = 2;

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
    stats: () => ({ ...stats, fetchedBytes: fetcher.fetchedBytes, requests: fetcher.requests, decoders: stats.decoders + fetcher.decoder.processes }),
  };
}

interface Run {
  steps: number[];
  frames: PackFrame[];
  restarts: number;
}

/** The chunks to fetch, in order, cut into runs of frames that follow one another in the pack. */
function planRuns(plan: DeltaPlan, fetchAt: readonly number[], pack: OpenPack): Run[] {
  const runs: Run[] = [];
  let run: Run | undefined;
  let bytes = 0;
  for (const i of fetchAt) {
    const frame = pack.frames.get(plan.steps[i]!.sha256);
    if (frame === undefined) {
      run = undefined;
      continue;
    }
    const last = run?.frames[run.frames.length - 1];
    if (run === undefined || last === undefined || frame.offset !== last.offset + last.size || bytes + frame.size > maxRunBytes) {
      run = { steps: [], frames: [], restarts: 0 };
      runs.push(run);
      bytes = 0;
    }
    run.steps.push(i);
    run.frames.push(frame);
    bytes += frame.size;
  }
  return runs;
}

/** Stands in for a run given up on: its chunks come from their own files. */
function failedRun(left: number): PackRun {
  return { left, take: () => Promise.reject(new Error('the pack run was given up on')), close: () => {} } as unknown as PackRun;
}

interface OpenPack {
  url: string;
  /** Frame of each chunk the pack holds, by the chunk's sha256. */
  frames: Map<string, PackFrame>;
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
    return { url: `${options.store}${paths.pack}`, frames };
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
  // runs: the chunks to fetch whose frames follow one another in the pack, each read as one
  // stream (read-pack-run.ts); the other chunks to fetch are GETs of their own files
  const runs = pack === undefined ? [] : planRuns(plan, fetchAt, pack);
  const runOf = new Map<number, number>();
  runs.forEach((run, r) => run.steps.forEach((i) => runOf.set(i, r)));
  const opened = new Map<number, PackRun>();
  const openRun = (r: number, from = 0) => {
    const run = runs[r]!;
    opened.set(r, new PackRun(fetcher, pack!.url, run.frames.slice(from), signal));
    stats.decoders++;
  };
  const single = fetchAt.filter((i) => !runOf.has(i));
  let nextFetch = 0;
  let aheadLength = 0;
  let requestsAhead = 0;
  const pending = new Map<number, Promise<Buffer>>();
  const fill = () => {
    while (nextFetch < single.length && requestsAhead < aheadRequests && (pending.size === 0 || aheadLength < aheadBytes)) {
      const i = single[nextFetch++]!;
      const step = plan.steps[i]!;
      const got = fetcher.get(step.sha256, step.length);
      requestsAhead++;
      // judged when its turn comes; until then a failure must not count as unhandled
      got.catch(() => {}).finally(() => requestsAhead--);
      pending.set(i, got);
      aheadLength += step.length;
    }
  };
  /** The next chunk of run `r`: from the pack, else (a failed run, a chunk that does not match) from its own file. */
  const fromRun = async (r: number, step: { sha256: string; length: number }): Promise<Buffer> => {
    // the run being read and the next one are open: the next one's request and zstd start early
    if (!opened.has(r)) openRun(r);
    if (r + 1 < runs.length && !opened.has(r + 1)) openRun(r + 1);
    const run = opened.get(r)!;
    const at = runs[r]!.frames.length - run.left;
    let problem: string;
    try {
      const data = await run.take();
      if (data.length === step.length && createHash('sha256').update(data).digest('hex') === step.sha256) {
        stats.packedChunks++;
        if (run.left === 0) opened.delete(r);
        return data;
      }
      problem = `chunk ${step.sha256} at ${runs[r]!.frames[at]!.offset} does not match the signed index`;
    } catch (error) {
      signal?.throwIfAborted();
      problem = (error as Error).message;
    }
    // the rest of the run from a request of its own (once), this chunk from its file
    run.close();
    const restarts = (runs[r]!.restarts += 1);
    if (restarts <= maxRunRestarts && at + 1 < runs[r]!.frames.length) openRun(r, at + 1);
    else opened.set(r, failedRun(runs[r]!.frames.length - at - 1));
    stats.packProblem ??= `${problem}; that chunk came from its own file`;
    return fetcher.get(step.sha256, step.length);
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
        const r = runOf.get(i);
        if (r !== undefined) data = await fromRun(r, step);
        else {
          data = await pending.get(i)!;
          pending.delete(i);
          aheadLength -= step.length;
        }
        stats.fetchedChunks++;
        if (step.recurs) kept.set(i, data);
      }
      yield data;
    }
  } finally {
    for (const run of opened.values()) run.close();
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
