/**
 * GETs single chunks from a chunk store (`<store>/<sha256>.zst`): one keep-alive connection pool
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
    const retries = this.options.retries ?? 3;
    for (let attempt = 0; ; attempt++) {
      this.options.signal?.throwIfAborted();
      let body: Buffer;
      try {
        body = await this.download(url, length);
      } catch (error) {
        if (isKubeosError(error) || this.options.signal?.aborted || attempt >= retries) {
          throw isKubeosError(error) ? error : new KubeosError('E_DELTA', `chunk ${url} could not be fetched after ${attempt + 1} tries: ${(error as Error).message}`, { cause: error, details: { url } });
        }
        await delay((this.options.backoffMs ?? 200) * (attempt + 1), undefined, { signal: this.options.signal });
        continue;
      }
      const data = await this.decoder.decode(body, length, url);
      const actual = createHash('sha256').update(data).digest('hex');
      if (data.length !== length || actual !== sha256) {
        throw new KubeosError('E_DELTA', `chunk ${url} holds ${data.length} bytes with sha256 ${actual}; the signed index says ${length} bytes, sha256 ${sha256}`, {
          hint: 'the chunk store holds a damaged object: republish the bundle (kubeos publish uploads missing chunks); the host installs the full bundle meanwhile',
          details: { url, expected: { length, sha256 }, actual: { length: data.length, sha256: actual } },
        });
      }
      return data;
    }
  }

  private async download(url: string, length: number): Promise<Buffer> {
    const { idleMs, signal } = this.options;
    this.requests++;
    const response = await new Promise<IncomingMessage>((resolve, reject) => {
      const request = (url.startsWith('https:') ? httpsGet : httpGet)(url, { agent: this.agent, signal }, resolve);
      request.setTimeout(idleMs, () => request.destroy(new Error(`no response from ${url} within ${idleMs / 1000} s`)));
      request.once('error', reject);
    });
    const status = response.statusCode ?? 0;
    if (status !== 200) {
      response.resume();
      const error = new KubeosError('E_DELTA', `GET ${url} answered HTTP ${status}`, {
        hint: status === 404 ? 'the chunk store lacks a chunk of this release (published without its chunks?): the host installs the full bundle instead' : undefined,
        details: { url, status },
      });
      // a server error may pass; a 404 or a 403 will not
      if (status >= 500) throw new Error(error.message);
      throw error;
    }
    // a zstd frame of one chunk is hardly bigger than the chunk: a far bigger body is not one
    const limit = length + (length >> 3) + 4096;
    const parts: Buffer[] = [];
    let received = 0;
    await new Promise<void>((resolve, reject) => {
      response.setTimeout(idleMs, () => response.destroy(new Error(`no data from ${url} for ${idleMs / 1000} s`)));
      response.on('data', (piece: Buffer) => {
        received += piece.length;
        this.fetchedBytes += piece.length;
        if (received > limit) {
          response.destroy(new KubeosError('E_DELTA', `chunk ${url} is over ${limit} bytes, too big for a ${length}-byte chunk`, { details: { url, limit } }));
          return;
        }
        parts.push(piece);
      });
      response.once('end', () => (response.complete ? resolve() : reject(new Error('connection closed'))));
      response.once('error', reject);
      response.once('aborted', () => reject(new Error('connection aborted')));
    });
    return Buffer.concat(parts);
  }
}
