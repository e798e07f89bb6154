/**
 * The chunk index of a bundle whose manifest names an index object: fetched once from the chunk
 * store beside the bundle, `<store><sha256>.zst`, as a chunk is (ChunkFetcher: retries, the signed
 * length and sha256 checked, the zstd frame decoded), then decoded and checked against the image
 * (chunk-index-object.ts). Its bytes and requests are part of what the install cost, so they are
 * reported whether it worked or not.
 */
import { openIndexObject } from '../core/bundle/chunk-index-object.js';
import type { ChunkIndexInfo, IndexObjectInfo } from '../core/bundle/manifest.js';
import { ChunkFetcher } from './fetch-chunks.js';

export interface IndexObjectFetch {
  /** Compressed bytes received, retries included. */
  bytes: number;
  requests: number;
}

export type FetchedIndex = IndexObjectFetch & ({ index: ChunkIndexInfo } | { error: unknown });

export async function fetchIndexObject(store: string, info: IndexObjectInfo, imageSize: number, options: { signal?: AbortSignal | undefined; idleMs: number }): Promise<FetchedIndex> {
  const fetcher = new ChunkFetcher(store, { signal: options.signal, idleMs: options.idleMs, sockets: 1 });
  try {
    const bytes = await fetcher.get(info.sha256, info.size);
    return { index: openIndexObject(bytes, info, imageSize), bytes: fetcher.fetchedBytes, requests: fetcher.requests };
  } catch (error) {
    return { error, bytes: fetcher.fetchedBytes, requests: fetcher.requests };
  } finally {
    fetcher.close();
  }
}
