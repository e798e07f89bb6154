/**
 * A HOSTILE update server for agent tests, on 127.0.0.1 only: it serves a published site (channels/,
 * bundles/) but misbehaves in one chosen way, the ways a broken proxy, a bad CDN or an attacker
 * between host and server would.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';

export const hostileModes = [
  /** every bundle response is cut at half its length, resumes included */
  'closes-midway',
  /** a resume (Range) is answered 200 with the whole body from the start */
  'ignores-range',
  /** a resume is answered 206 with a Content-Range that starts somewhere else */
  'wrong-content-range',
  /** the resumed bytes come from another file (same ETag): what a changed object behind a cache looks like */
  'different-body-on-resume',
  /** the bundle at 1 KiB every half second, from its first byte and on every resume */
  'bundle-trickle',
  /** every request is redirected to itself */
  'redirect-loop',
  /** the channel index at one byte per second */
  'index-one-byte-per-second',
  /** the channel index announces 5 GB */
  'index-5-gb',
  /** the bundle with its true Content-Length, then 64 KiB more on the same connection */
  'more-than-content-length',
  /** the bundle without a Content-Length, then random bytes for as long as they are read */
  'endless-after-bundle',
  /** half the bundle, then the connection stays open and silent, resumes included */
  'stalls-mid-body',
] as const;
export type HostileMode = (typeof hostileModes)[number];

export interface HostileServer {
  /** Base URL (the host's updateServer). */
  url: string;
  requests: { path: string; range: string | undefined }[];
}

export async function startHostileServer(t: ExecutionContext, site: string, mode: HostileMode, other?: Buffer): Promise<HostileServer> {
  const state: HostileServer = { url: '', requests: [] };
  const timers = new Set<NodeJS.Timeout>();
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').replace(/^\/+/, '').replace(/\?.*$/, '');
    state.requests.push({ path, range: req.headers.range });
    if (mode === 'redirect-loop') return res.writeHead(302, { location: req.url ?? '/' }).end();
    let data: Buffer;
    try {
      data = await readFile(join(site, path));
    } catch {
      return res.writeHead(404).end();
    }
    if (path.startsWith('channels/')) {
      if (mode === 'index-5-gb') {
        res.writeHead(200, { 'content-length': String(5 * 1024 ** 3) });
        res.write(data);
        return; // and never the rest
      }
      if (mode === 'index-one-byte-per-second') {
        res.writeHead(200, { 'content-length': String(data.length) });
        let i = 0;
        const drip = () => {
          if (res.destroyed || i >= data.length) return res.end();
          res.write(data.subarray(i, ++i));
          const timer = setTimeout(drip, 1000);
          timers.add(timer);
        };
        return drip();
      }
      return res.end(data);
    }
    const from = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0);
    const headers = { etag: '"same"', 'accept-ranges': 'bytes' };
    if (mode === 'more-than-content-length' && from === 0) {
      // past Node's own HTTP layer, which would refuse to write more than it announced
      req.socket.write(`HTTP/1.1 200 OK\r\ncontent-length: ${data.length}\r\netag: "same"\r\naccept-ranges: bytes\r\nconnection: close\r\n\r\n`);
      req.socket.write(data);
      req.socket.end(Buffer.alloc(64 * 1024, 0x41));
      return;
    }
    if (mode === 'endless-after-bundle' && from === 0) {
      res.writeHead(200, { etag: '"same"' }); // chunked: no length at all
      res.write(data);
      const more = () => {
        if (res.destroyed) return;
        // as fast as the reader takes them
        if (res.write(Buffer.alloc(64 * 1024, 0x42))) setImmediate(more);
        else res.once('drain', more);
      };
      return more();
    }
    if (mode === 'stalls-mid-body') {
      res.writeHead(from > 0 ? 206 : 200, { ...headers, 'content-length': String(data.length - from), ...(from > 0 ? { 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` } : {}) });
      return void res.write(data.subarray(from, from + ((data.length - from) >> 1))); // and then nothing, never an end
    }
    if (mode === 'bundle-trickle') {
      res.writeHead(from > 0 ? 206 : 200, { ...headers, 'content-length': String(data.length - from), ...(from > 0 ? { 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` } : {}) });
      let at = from;
      const drip = () => {
        if (res.destroyed || at >= data.length) return res.end();
        res.write(data.subarray(at, at + 1024));
        at += 1024;
        const timer = setTimeout(drip, 500);
        timers.add(timer);
      };
      return drip();
    }
    if (from === 0 || mode === 'ignores-range') {
      res.writeHead(200, { ...headers, 'content-length': String(data.length) });
      if (mode === 'ignores-range' && from > 0) return res.end(data);
      // first request: half, then the connection drops (every mode but ignores-range resumes)
      // flushed first: a destroy right after write would drop the bytes and even the headers
      return void res.write(data.subarray(0, data.length >> 1), () => res.destroy());
    }
    if (mode === 'closes-midway') {
      res.writeHead(206, { ...headers, 'content-length': String(data.length - from), 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` });
      return void res.write(data.subarray(from, from + ((data.length - from) >> 1)), () => res.destroy());
    }
    if (mode === 'wrong-content-range') {
      const start = Math.max(0, from - 4096);
      res.writeHead(206, { ...headers, 'content-length': String(data.length - start), 'content-range': `bytes ${start}-${data.length - 1}/${data.length}` });
      return res.end(data.subarray(start));
    }
    if (mode === 'different-body-on-resume') {
      const body = other ?? Buffer.alloc(data.length, 0x5a);
      res.writeHead(206, { ...headers, 'content-length': String(data.length - from), 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` });
      return res.end(Buffer.concat([body, Buffer.alloc(Math.max(0, data.length - body.length))]).subarray(from, data.length));
    }
    res.writeHead(206, { ...headers, 'content-length': String(data.length - from), 'content-range': `bytes ${from}-${data.length - 1}/${data.length}` });
    res.end(data.subarray(from));
  };
  const server = createServer((req, res) => {
    handle(req, res).catch(() => res.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => {
    for (const timer of timers) clearTimeout(timer);
    server.closeAllConnections();
    server.close(() => resolve());
  }));
  state.url = `http://127.0.0.1:${(server.address() as { port: number }).port}/`;
  return state;
}
