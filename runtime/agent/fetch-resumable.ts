/**
 * A download as one Readable that survives dropped connections: after an error or a short body it
 * asks again with `Range: bytes=N-` (and `If-Range` with the first response's ETag, so the object
 * cannot change underneath), up to `retries` times. A local path or file:// URL is just read.
 *
 * Built on node:http rather than fetch: the body arrives as plain Buffers through events, with no
 * web-stream layer and its promise per piece, which matters when a gigabyte streams through. Over
 * http the body is read by getPlainHttp where it can, into 512 KiB buffers (see there why).
 */
import { createReadStream } from 'node:fs';
import { get as httpGet, type IncomingMessage } from 'node:http';
import { get as httpsGet } from 'node:https';
import { Readable } from 'node:stream';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { KubeosError } from '../core/errors.js';
import { getPlainHttp } from './get-plain-http.js';

export interface ResumableOptions {
  retries?: number;
  signal?: AbortSignal;
  /** Called after each reconnect, with the byte offset it resumed from. */
  onResume?: (offset: number, attempt: number) => void;
  backoffMs?: number;
  /**
   * A connection that sends no response, or no body bytes while the agent is ready for them, for
   * this long is dropped and resumed (default 30 s): a stalled server never holds the lock forever.
   */
  idleMs?: number;
  /**
   * A body that trickles in slower than this (bytes per second, over any stretch of twice idleMs
   * while the agent was ready for data) is dropped and resumed, then given up (default 4096): a
   * server sending a byte at a time never holds the lock forever either. 0 turns it off.
   */
  minBytesPerSecond?: number;
}

const defaultIdleMs = 30_000;

const maxRedirects = 5;

export function isUrl(source: string): boolean {
  return /^https?:\/\//.test(source);
}

export function openSource(source: string, options: ResumableOptions = {}): Readable {
  if (source.startsWith('file://')) return createReadStream(fileURLToPath(source), { highWaterMark: 1 << 20 });
  if (!isUrl(source)) return createReadStream(source, { highWaterMark: 1 << 20 });
  return new ResumableDownload(source, options);
}

/**
 * `length` bytes of a URL from byte `start`, by a Range request (fewer when the object is shorter).
 * A server that ignores Range and sends the whole object from 0 is cut off after them (from 0
 * only: anything else is refused). The result is every byte received, which may run past `length`.
 */
export async function fetchRange(url: string, start: number, length: number, options: { signal?: AbortSignal | undefined; idleMs?: number } = {}): Promise<Buffer> {
  const idleMs = options.idleMs ?? defaultIdleMs;
  const response = await get(url, { range: `bytes=${start}-${start + length - 1}` }, options.signal, idleMs);
  const status = response.statusCode ?? 0;
  const contentRange = String(response.headers['content-range'] ?? '');
  if (!(status === 206 && contentRange.startsWith(`bytes ${start}-`)) && !(status === 200 && start === 0)) {
    response.resume();
    throw new KubeosError('E_FETCH', `GET ${url} for bytes ${start}-${start + length - 1} answered HTTP ${status}${contentRange ? ` with Content-Range ${contentRange}` : ''}`, { details: { status, contentRange } });
  }
  const parts: Buffer[] = [];
  let received = 0;
  // the request's own abort listener may be gone once its response came: the body is ended here
  const abort = () => response.destroy(new Error(`GET ${url} for bytes ${start}-${start + length - 1} was stopped`));
  options.signal?.addEventListener('abort', abort, { once: true });
  if (options.signal?.aborted) abort();
  await new Promise<void>((resolve, reject) => {
    response.setTimeout(idleMs, () => response.destroy(new Error(`no data from ${url} for ${idleMs / 1000} s`)));
    response.on('data', (piece: Buffer) => {
      parts.push(piece);
      received += piece.length;
      if (received >= length) {
        resolve();
        response.destroy();
      }
    });
    response.once('end', resolve);
    response.once('error', reject);
    response.once('close', () => (response.complete || received >= length ? resolve() : reject(new Error('connection closed'))));
  }).finally(() => options.signal?.removeEventListener('abort', abort));
  return Buffer.concat(parts, received);
}

/** What a download reads of a response, from node:http or getPlainHttp. */
type BodyResponse = Readable & {
  readonly statusCode?: number | undefined;
  readonly complete: boolean;
  readonly headers: Readonly<Record<string, string | string[] | undefined>>;
};

/**
 * GET with optional headers, following redirects; resolves with the response of the last hop.
 * `plain`: over http, read the body with getPlainHttp where it can (the bundle's download).
 */
async function get(url: string, headers: Record<string, string>, signal: AbortSignal | undefined, idleMs: number, plain: true): Promise<BodyResponse>;
async function get(url: string, headers: Record<string, string>, signal: AbortSignal | undefined, idleMs?: number): Promise<IncomingMessage>;
async function get(url: string, headers: Record<string, string>, signal: AbortSignal | undefined, idleMs = defaultIdleMs, plain = false): Promise<BodyResponse> {
  let target = url;
  for (let hop = 0; ; hop++) {
    const response = (plain ? await getPlainHttp(new URL(target), headers, signal, idleMs) : undefined) ?? await new Promise<IncomingMessage>((resolve, reject) => {
      const request = (target.startsWith('https:') ? httpsGet : httpGet)(target, { headers, signal }, (res) => {
        // from here the body's own idle timer (below) takes over: a paused body is not idle
        request.setTimeout(0);
        resolve(res);
      });
      request.setTimeout(idleMs, () => request.destroy(new Error(`no response from ${target} within ${idleMs / 1000} s`)));
      request.once('error', reject);
    });
    const location = response.headers.location;
    if (response.statusCode === undefined || response.statusCode < 300 || response.statusCode >= 400 || location === undefined) return response;
    response.resume();
    if (hop >= maxRedirects) throw new KubeosError('E_FETCH', `GET ${url} redirected more than ${maxRedirects} times`);
    target = new URL(location, target).toString();
  }
}

class ResumableDownload extends Readable {
  private received = 0;
  private total: number | undefined;
  private etag: string | undefined;
  private response: BodyResponse | undefined;
  private started = false;

  constructor(private readonly url: string, private readonly options: ResumableOptions) {
    super({ highWaterMark: 1 << 20 });
  }

  override _read(): void {
    if (!this.started) {
      this.started = true;
      this.run().then(() => this.push(null), (error: unknown) => this.destroy(error as Error));
    }
    this.response?.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.response?.destroy();
    callback(error);
  }

  private async run(): Promise<void> {
    const { url, options } = this;
    const retries = options.retries ?? 5;
    for (let attempt = 0; ; ) {
      let failure: unknown;
      try {
        if (await this.attempt()) return;
        failure = new Error(`connection closed after ${this.received} of ${this.total} bytes`);
      } catch (error) {
        if (error instanceof KubeosError || options.signal?.aborted || this.destroyed) throw error;
        failure = error;
      }
      attempt++;
      if (attempt > retries) {
        throw new KubeosError('E_FETCH', `download of ${url} failed after ${retries} retries at byte ${this.received}${this.total ? ` of ${this.total}` : ''}: ${(failure as Error).message ?? String(failure)}`, { cause: failure });
      }
      options.onResume?.(this.received, attempt);
      // back off before reconnecting, so a flapping link is not hammered
      await delay((options.backoffMs ?? 250) * attempt, undefined, { signal: options.signal });
    }
  }

  /** One request: true when the whole object has arrived. */
  private async attempt(): Promise<boolean> {
    const { url } = this;
    const headers: Record<string, string> = {};
    if (this.received > 0) {
      headers['range'] = `bytes=${this.received}-`;
      if (this.etag) headers['if-range'] = this.etag;
    }
    const idleMs = this.options.idleMs ?? defaultIdleMs;
    const response = await get(url, headers, this.options.signal, idleMs, true);
    const status = response.statusCode ?? 0;
    if (this.received > 0 && status !== 206) {
      response.resume();
      throw new KubeosError('E_FETCH', `${url} did not resume at byte ${this.received} (HTTP ${status}); the object may have changed`);
    }
    if (this.received > 0) {
      // a 206 must carry the bytes asked for: others would be fed to the decompressor as if they were
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(response.headers['content-range'] ?? ''));
      const start = range === null ? undefined : Number(range[1]);
      const size = range === null || range[3] === '*' ? undefined : Number(range[3]);
      if (start !== this.received || (this.total !== undefined && size !== undefined && size !== this.total)) {
        response.resume();
        throw new KubeosError('E_FETCH', `${url} answered the resume at byte ${this.received} with Content-Range ${JSON.stringify(response.headers['content-range'] ?? '(none)')}`, {
          hint: 'a proxy or server between this host and the image server mangles range requests',
          details: { url, requested: this.received, contentRange: response.headers['content-range'] },
        });
      }
    }
    if (this.received === 0 && status !== 200) {
      response.resume();
      throw new KubeosError('E_FETCH', `GET ${url} answered HTTP ${status}`, { details: { status } });
    }
    if (this.received === 0) {
      const etag = response.headers['etag'];
      this.etag = typeof etag === 'string' ? etag : undefined;
      const length = response.headers['content-length'];
      this.total = length === undefined ? undefined : Number(length);
    }
    this.response = response;
    let idle: NodeJS.Timeout | undefined;
    let rate: NodeJS.Timeout | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        // the reason first: destroying the response also emits 'aborted', which would name none
        const fail = (error: Error) => {
          reject(error);
          response.destroy(error);
        };
        // idle only counts while the body flows: paused for backpressure, the wait is ours. A piece
        // only notes its time; the one timer looks when it fires (a timer set again for each of a
        // gigabyte's 7,000 pieces took some 40 ms of the pump's thread)
        let lastData = performance.now();
        const check = () => {
          const quiet = performance.now() - lastData;
          if (response.isPaused()) {
            lastData = performance.now();
            idle = setTimeout(check, idleMs);
          } else if (quiet >= idleMs) {
            fail(new Error(`no data from ${url} for ${idleMs / 1000} s at byte ${this.received}`));
          } else {
            idle = setTimeout(check, idleMs - quiet);
          }
        };
        idle = setTimeout(check, idleMs);
        // the rate over the last `window` of time the body could flow (paused time is ours, not the server's)
        const window = idleMs * 2;
        const minRate = this.options.minBytesPerSecond ?? 4096;
        let flowing = 0;
        const samples: { at: number; received: number }[] = [{ at: 0, received: this.received }];
        rate = setInterval(() => {
          if (response.isPaused()) return;
          flowing += 1000;
          samples.push({ at: flowing, received: this.received });
          while (samples.length > 1 && samples[1]!.at <= flowing - window) samples.shift();
          const first = samples[0]!;
          if (minRate > 0 && flowing - first.at >= window && (this.received - first.received) / ((flowing - first.at) / 1000) < minRate) {
            fail(new Error(`slower than ${minRate} bytes/s for ${window / 1000} s at byte ${this.received}`));
          }
        }, 1000);
        response.on('data', (piece: Buffer) => {
          this.received += piece.length;
          lastData = performance.now();
          if (!this.push(piece)) response.pause();
        });
        response.once('end', resolve);
        response.once('error', reject);
        response.once('aborted', () => reject(new Error('connection aborted')));
        response.once('close', () => {
          if (!response.complete) reject(new Error('connection closed'));
        });
      });
    } finally {
      clearTimeout(idle);
      clearInterval(rate);
      this.response = undefined;
    }
    return this.total === undefined || this.received >= this.total;
  }
}
