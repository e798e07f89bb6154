/**
 * GETs chunks from a chunk store (`<store>/<sha256>.zst`, or a run of them from a release's pack by
 * one Range request, chunk-pack.ts): one keep-alive connection pool
 * for the whole install, a few requests in flight, a retry with backoff for network errors and
 * 5xx, none for a 404 (the store lacks the chunk: the install falls back to the full bundle).
 * Each body is decompressed by zstd (in batches, decode-chunks.ts) and checked against the chunk's signed length and sha256
 * before it is handed out; a chunk that does not match is an E_DELTA, never written.
 */
import { createHash } from 'node:crypto';
import { Agent as HttpAgent, get as httpGet, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, get as httpsGet } from 'node:https';
import { setMaxListeners } from 'node:events';
import { setTimeout as delay } from 'node:timers/promises';
import { isKubeosError, KubeosError } from '../core/errors.js';
import { ChunkDecoder } from './decode-chunks.js';

/** A chunk's frame in a pack (chunk-pack.ts), with what the signed index says of the chunk. */
export interface PackFrame {
  sha256: string;
  length: number;
  offset: number;
  size: number;
}

export interface ChunkFetcherOptions {
  signal?: AbortSignal | undefined;
  /** No response or no body data for this long: the request is dropped and retried. */
  idleMs: number;
  retries?: number;
  backoffMs?: number;
  /** Connections kept open to the store. */
  sockets?: number;
}

export class ChunkFetcher {
  private readonly agent: HttpAgent;
  readonly decoder: ChunkDecoder;
  /** Compressed bytes received, retries included: what the delta cost on the wire. */
  fetchedBytes = 0;
  requests = 0;

  constructor(private readonly store: string, private readonly options: ChunkFetcherOptions) {
    const Agent = store.startsWith('https:') ? HttpsAgent : HttpAgent;
    this.agent = new Agent({ keepAlive: true, maxSockets: options.sockets ?? 4 });
    this.decoder = new ChunkDecoder(options.signal);
    // each request in flight listens on the install's signal: dozens may wait for a socket
    if (options.signal !== undefined) setMaxListeners(100, options.signal);
  }

  close(): void {
    this.agent.destroy();
  }

  /** The verified bytes of one chunk. */
  async get(sha256: string, length: number): Promise<Buffer> {
    const url = `${this.store}${sha256}.zst`;
    // a zstd frame of one chunk is hardly bigger than the chunk: a far bigger body is not one
    const body = await this.withRetries(url, () => this.download(url, frameLimit(length)));
    return this.check(await this.decoder.decode(body, length, url), sha256, length, url);
  }

  /**
   * A run of chunks that sit one after another in a pack: one Range request for all their frames,
   * each decoded and checked against the signed index as `get` does. One promise per chunk.
   */
  getRun(packUrl: string, frames: readonly PackFrame[]): Promise<Buffer>[] {
    const start = frames[0]!.offset;
    const last = frames[frames.length - 1]!;
    const end = last.offset + last.size;
    const url = `${packUrl} bytes ${start}-${end - 1}`;
    const body = this.withRetries(url, () => this.download(packUrl, end - start, { start, end }));
    // judged chunk by chunk; until then a failure must not count as unhandled
    body.catch(() => {});
    return frames.map(async (frame) => {
      const data = await body;
      const at = frame.offset - start;
      const chunkUrl = `${packUrl} (chunk ${frame.sha256} at ${frame.offset})`;
      return this.check(await this.decoder.decode(data.subarray(at, at + frame.size), frame.length, chunkUrl), frame.sha256, frame.length, chunkUrl);
    });
  }

  /** A small object of the store (a pack map), or undefined when the store has none (404). */
  async getObject(path: string, limit: number): Promise<Buffer | undefined> {
    const url = `${this.store}${path}`;
    try {
      return await this.withRetries(url, () => this.download(url, limit));
    } catch (error) {
      if (isKubeosError(error) && (error.details as { status?: number } | undefined)?.status === 404) return undefined;
      throw error;
    }
  }

  private check(data: Buffer, sha256: string, length: number, url: string): Buffer {
    const actual = createHash('sha256').update(data).digest('hex');
    if (data.length !== length || actual !== sha256) {
      throw new KubeosError('E_DELTA', `chunk ${url} holds ${data.length} bytes with sha256 ${actual}; the signed index says ${length} bytes, sha256 ${sha256}`, {
        hint: 'the chunk store holds a damaged object: republish the bundle (kubeos publish uploads missing chunks); the host installs the full bundle meanwhile',
        details: { url, expected: { length, sha256 }, actual: { length: data.length, sha256: actual } },
      });
    }
    return data;
  }

  /** Network errors and 5xx are tried again with backoff; a KubeosError (404, 403, too big, not ranged) is final. */
  private async withRetries<T>(url: string, attempt: () => Promise<T>): Promise<T> {
    const retries = this.options.retries ?? 3;
    for (let tries = 0; ; tries++) {
      this.options.signal?.throwIfAborted();
      try {
        return await attempt();
      } catch (error) {
        if (isKubeosError(error) || this.options.signal?.aborted || tries >= retries) {
          throw isKubeosError(error) ? error : new KubeosError('E_DELTA', `${url} could not be fetched after ${tries + 1} tries: ${(error as Error).message}`, { cause: error, details: { url } });
        }
        await delay((this.options.backoffMs ?? 200) * (tries + 1), undefined, { signal: this.options.signal });
      }
    }
  }

  /**
   * One GET: the whole body, at most `limit` bytes; with `range`, exactly those bytes (a server
   * that answers a range with anything but that range gets a final E_DELTA).
   */
  private async download(url: string, limit: number, range?: { start: number; end: number }): Promise<Buffer> {
    const { idleMs, signal } = this.options;
    this.requests++;
    const headers = range === undefined ? {} : { range: `bytes=${range.start}-${range.end - 1}` };
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const request = (url.startsWith('https:') ? httpsGet : httpGet)(url, { agent: this.agent, signal, headers }, resolve);
      request.setTimeout(idleMs, () => request.destroy(new Error(`no response from ${url} within ${idleMs / 1000} s`)));
      request.once('error', reject);
    });
    const status = response.statusCode ?? 0;
    if (status !== (range === undefined ? 200 : 206)) {
      response.resume();
      const error = new KubeosError('E_DELTA', `GET ${url}${range === undefined ? '' : ` (${headers.range})`} answered HTTP ${status}`, {
        hint: status === 404 ? 'the chunk store lacks an object of this release (published without its chunks?): the host installs the full bundle instead' : undefined,
        details: { url, status },
      });
      // a server error may pass; a 404 or a 403 will not
      if (status >= 500) throw new Error(error.message);
      throw error;
    }
    if (range !== undefined) {
      const answered = /^bytes (\d+)-(\d+)\//.exec(response.headers['content-range'] ?? '');
      if (answered === null || Number(answered[1]) !== range.start || Number(answered[2]) !== range.end - 1) {
        response.resume();
        throw new KubeosError('E_DELTA', `GET ${url} (${headers.range}) answered the range "${response.headers['content-range'] ?? ''}"`, { details: { url, status } });
      }
    }
    const parts: Buffer[] = [];
    let received = 0;
    await new Promise<void>((resolve, reject) => {
      response.setTimeout(idleMs, () => response.destroy(new Error(`no data from ${url} for ${idleMs / 1000} s`)));
      response.on('data', (piece: Buffer) => {
        received += piece.length;
        this.fetchedBytes += piece.length;
        if (received > limit) {
          response.destroy(new KubeosError('E_DELTA', `${url} is over ${limit} bytes, more than it may hold`, { details: { url, limit } }));
          return;
        }
        parts.push(piece);
      });
      response.once('end', () => (response.complete ? resolve() : reject(new Error('connection closed'))));
      response.once('error', reject);
      response.once('aborted', () => reject(new Error('connection aborted')));
    });
    const body = Buffer.concat(parts, received);
    if (range !== undefined && body.length !== limit) throw new Error(`${url} sent ${body.length} bytes of the ${limit} asked for`);
    return body;
  }
}

/** A zstd frame of one chunk is hardly bigger than the chunk: a far bigger body is not one. */
function frameLimit(length: number): number {
  return length + (length >> 3) + 4096;
}
