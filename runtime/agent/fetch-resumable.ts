/**
 * A download as one Readable that survives dropped connections: after an error or a short body it
 * asks again with `Range: bytes=N-` (and `If-Range` with the first response's ETag, so the object
 * cannot change underneath), up to `retries` times. A local path or file:// URL is just read.
 */
import { createReadStream } from 'node:fs';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { KubeosError } from '../core/errors.js';

export interface ResumableOptions {
  retries?: number;
  signal?: AbortSignal;
  /** Called after each reconnect, with the byte offset it resumed from. */
  onResume?: (offset: number, attempt: number) => void;
  backoffMs?: number;
}

export function isUrl(source: string): boolean {
  return /^https?:\/\//.test(source);
}

export function openSource(source: string, options: ResumableOptions = {}): Readable {
  if (source.startsWith('file://')) return createReadStream(fileURLToPath(source), { highWaterMark: 1 << 20 });
  if (!isUrl(source)) return createReadStream(source, { highWaterMark: 1 << 20 });
  return Readable.from(download(source, options), { objectMode: false });
}

async function* download(url: string, options: ResumableOptions): AsyncGenerator<Buffer> {
  const retries = options.retries ?? 5;
  let received = 0;
  let total: number | undefined;
  let etag: string | undefined;
  let attempt = 0;
  for (;;) {
    const headers: Record<string, string> = {};
    if (received > 0) {
      headers['range'] = `bytes=${received}-`;
      if (etag) headers['if-range'] = etag;
    }
    let failure: unknown;
    try {
      const response = await fetch(url, { headers, signal: options.signal });
      if (received > 0 && response.status !== 206) {
        throw new KubeosError('E_FETCH', `${url} did not resume at byte ${received} (HTTP ${response.status}); the object may have changed`);
      }
      if (received === 0 && response.status !== 200) {
        throw new KubeosError('E_FETCH', `GET ${url} answered HTTP ${response.status}`, { details: { status: response.status } });
      }
      if (received === 0) {
        etag = response.headers.get('etag') ?? undefined;
        const length = response.headers.get('content-length');
        total = length === null ? undefined : Number(length);
      }
      if (response.body === null) throw new KubeosError('E_FETCH', `GET ${url} had no body`);
      for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) {
        received += chunk.byteLength;
        yield Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
      }
      if (total === undefined || received >= total) return;
      failure = new Error(`connection closed after ${received} of ${total} bytes`);
    } catch (error) {
      if (error instanceof KubeosError || options.signal?.aborted) throw error;
      failure = error;
    }
    attempt++;
    if (attempt > retries) {
      throw new KubeosError('E_FETCH', `download of ${url} failed after ${retries} retries at byte ${received}${total ? ` of ${total}` : ''}: ${(failure as Error).message ?? String(failure)}`, { cause: failure });
    }
    options.onResume?.(received, attempt);
    // back off before reconnecting, so a flapping link is not hammered
    await delay((options.backoffMs ?? 250) * attempt, undefined, { signal: options.signal });
  }
}
