/**
 * The image of a delta install as one stream, in order: each chunk of the signed index read from
 * the seed (the booted slot) or fetched from the chunk store, and released only after its sha256
 * matched the index. A seed chunk that no longer matches (the slot changed since it was indexed)
 * is fetched instead. At the end the whole image must have the signed `uncompressedSha256`, so an
 * index that disagreed with the image would fail here, before anything is made bootable.
 *
 * The seed is only ever read: it is the booted slot, never the standby being written.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { KubeosError } from '../core/errors.js';
import { ChunkFetcher } from './fetch-chunks.js';
import type { SlotTarget } from './open-slot.js';
import type { DeltaPlan } from './plan-delta.js';

export interface DeltaSourceOptions {
  seed: SlotTarget;
  plan: DeltaPlan;
  /** URL of the chunk store, ending in `/`. */
  store: string;
  uncompressedSha256: string;
  signal?: AbortSignal | undefined;
  idleMs: number;
  /** Chunk requests in flight ahead of the writer. */
  inFlight?: number;
}

export interface DeltaStats {
  /** Compressed bytes received from the chunk store. */
  fetchedBytes: number;
  fetchedChunks: number;
  reusedBytes: number;
  reusedChunks: number;
  /** Seed chunks that no longer matched when read, and were fetched instead. */
  seedMismatches: number;
  requests: number;
}

export function openDeltaSource(options: DeltaSourceOptions): { stream: Readable; stats: () => DeltaStats } {
  const fetcher = new ChunkFetcher(options.store, { signal: options.signal, idleMs: options.idleMs, sockets: options.inFlight ?? 6 });
  const stats: DeltaStats = { fetchedBytes: 0, fetchedChunks: 0, reusedBytes: 0, reusedChunks: 0, seedMismatches: 0, requests: 0 };
  const stream = Readable.from(produce(options, fetcher, stats), { objectMode: false, highWaterMark: 4 << 20 });
  return {
    stream,
    stats: () => ({ ...stats, fetchedBytes: fetcher.fetchedBytes, requests: fetcher.requests }),
  };
}

async function* produce(options: DeltaSourceOptions, fetcher: ChunkFetcher, stats: DeltaStats): AsyncGenerator<Buffer> {
  const { seed, plan, signal } = options;
  const inFlight = options.inFlight ?? 6;
  const fetchAt = plan.steps.flatMap((step, i) => (step.from === 'store' ? [i] : []));
  let nextFetch = 0;
  const pending = new Map<number, Promise<Buffer>>();
  const fill = () => {
    while (pending.size < inFlight && nextFetch < fetchAt.length) {
      const i = fetchAt[nextFetch++]!;
      const step = plan.steps[i]!;
      const got = fetcher.get(step.sha256, step.length);
      // judged when its turn comes; until then a failure must not count as unhandled
      got.catch(() => {});
      pending.set(i, got);
    }
  };
  // the seed is a source like the chunk store: a seed that cannot be read is a delta problem
  // (E_DELTA: the full bundle instead), not a failure of the slot being written
  const seedProblem = (error: unknown) => new KubeosError('E_DELTA', `the booted slot ${seed.path} cannot be read as the delta's seed: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error, details: { seed: seed.path } });
  const handle = await open(seed.path, 'r').catch((error: unknown) => {
    throw seedProblem(error);
  });
  const whole = createHash('sha256');
  try {
    for (const [i, step] of plan.steps.entries()) {
      signal?.throwIfAborted();
      fill();
      let data: Buffer;
      if (step.from === 'seed') {
        data = Buffer.allocUnsafe(step.length);
        const { bytesRead } = await handle.read(data, 0, step.length, seed.offset + step.seedOffset).catch((error: unknown) => {
          throw seedProblem(error);
        });
        if (bytesRead === step.length && createHash('sha256').update(data).digest('hex') === step.sha256) {
          stats.reusedBytes += step.length;
          stats.reusedChunks++;
        } else {
          stats.seedMismatches++;
          data = await fetcher.get(step.sha256, step.length);
          stats.fetchedChunks++;
        }
      } else {
        data = await pending.get(i)!;
        pending.delete(i);
        stats.fetchedChunks++;
      }
      whole.update(data);
      yield data;
    }
    const actual = whole.digest('hex');
    if (actual !== options.uncompressedSha256) {
      throw new KubeosError('E_DELTA', `the image assembled from the chunk index has sha256 ${actual}, the manifest says ${options.uncompressedSha256}`, {
        hint: 'the bundle\'s signed index disagrees with its image: the host installs the full bundle instead',
        details: { expected: options.uncompressedSha256, actual },
      });
    }
  } finally {
    await handle.close();
    fetcher.close();
  }
}
