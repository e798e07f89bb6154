/**
 * The bundle download's own http reader (get-plain-http.ts) against a server written byte by byte
 * (net), and openSource on top of it: the bytes that arrive are the body, however the response is
 * cut into packets; what it does not take goes to node:http.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer, type AddressInfo, type Socket } from 'node:net';
import { openSource } from '../../runtime/agent/fetch-resumable.js';
import { getPlainHttp, type PlainHttpResponse } from '../../runtime/agent/get-plain-http.js';

/** A server that answers each connection with `answer(socket, request)`; the request line and headers it got are kept. */
async function rawServer(t: { teardown: (fn: () => void) => void }, answer: (socket: Socket) => Promise<void>): Promise<{ url: string; requests: string[] }> {
  const requests: string[] = [];
  const server = createServer((socket) => {
    let got = '';
    socket.on('data', (data: Buffer) => {
      got += data.toString('latin1');
      if (!got.includes('\r\n\r\n')) return;
      requests.push(got);
      got = '';
      answer(socket).catch(() => socket.destroy());
    });
    socket.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.teardown(() => server.close());
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/bundle.kubeos`, requests };
}

/** Writes `data` as pieces of the given sizes, waiting for each to drain. */
async function writeInPieces(socket: Socket, data: Buffer, sizes: number[]): Promise<void> {
  let at = 0;
  for (let i = 0; at < data.length; i++) {
    const size = sizes[i % sizes.length]!;
    const piece = data.subarray(at, at + size);
    at += piece.length;
    if (!socket.write(piece)) await once(socket, 'drain');
    // a separate packet each: the reader sees the response cut where it was cut here
    await new Promise((resolve) => setImmediate(resolve));
  }
}

async function readAll(response: PlainHttpResponse | NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const piece of response) parts.push(piece as Buffer);
  return Buffer.concat(parts);
}

const sha = (data: Buffer) => createHash('sha256').update(data).digest('hex');

test('a body of several MiB cut into odd packets, headers split too, arrives whole and in order', async (t) => {
  const body = randomBytes(3 * 1024 * 1024 + 12345);
  const head = Buffer.from(`HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: ${body.length}\r\nETag: "v1"\r\n\r\n`);
  const { url, requests } = await rawServer(t, async (socket) => {
    // the header ends inside the second piece, with the body's first bytes after it in that piece
    await writeInPieces(socket, Buffer.concat([head, body]), [17, head.length, 70_001, 1_000_000, 3]);
    socket.end();
  });
  const response = await getPlainHttp(new URL(url), { range: 'bytes=0-' }, undefined, 5000);
  if (response === undefined) return t.fail('the response was left to node:http');
  t.is(response.statusCode, 200);
  t.is(response.headers['etag'], '"v1"');
  t.is(sha(await readAll(response)), sha(body));
  t.true(response.complete);
  t.regex(requests[0] ?? '', /^GET \/bundle\.kubeos HTTP\/1\.1\r\n/);
  t.regex(requests[0] ?? '', /\r\nrange: bytes=0-\r\n/i);
});

test('bytes a server sends past its Content-Length are not part of the body', async (t) => {
  const body = randomBytes(200_000);
  const { url } = await rawServer(t, async (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
    socket.write(body);
    socket.end('and then some garbage');
  });
  const response = await getPlainHttp(new URL(url), {}, undefined, 5000);
  if (response === undefined) return t.fail('the response was left to node:http');
  t.is(sha(await readAll(response)), sha(body));
});

test('a connection closed inside the body is an error that says how far it got', async (t) => {
  const { url } = await rawServer(t, async (socket) => {
    socket.write('HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n');
    socket.end(Buffer.alloc(40_000, 1));
  });
  const response = await getPlainHttp(new URL(url), {}, undefined, 5000);
  if (response === undefined) return t.fail('the response was left to node:http');
  const error = await t.throwsAsync(readAll(response));
  t.regex(error?.message ?? '', /connection closed after 40000 bytes of the body/);
  t.false(response.complete);
});

test('headers that never end are refused once they pass 64 KiB, not read for ever', async (t) => {
  const { url } = await rawServer(t, async (socket) => {
    socket.write('HTTP/1.1 200 OK\r\n');
    for (let i = 0; i < 2000 && !socket.destroyed; i++) {
      if (!socket.write(`X-Filler-${i}: ${'y'.repeat(100)}\r\n`)) await once(socket, 'drain');
    }
  });
  const error = await t.throwsAsync(getPlainHttp(new URL(url), {}, undefined, 5000));
  t.regex(error?.message ?? '', /has over 65536 bytes of headers/);
});

test('a server that never answers is an error within the idle time', async (t) => {
  const { url } = await rawServer(t, async () => {});
  const error = await t.throwsAsync(getPlainHttp(new URL(url), {}, undefined, 300));
  t.regex(error?.message ?? '', /no response from .* within 0\.3 s/);
});

for (const [name, head, body] of [
  ['a chunked body', 'HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n', '5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n'],
  ['a body without a length, ended by the close', 'HTTP/1.1 200 OK\r\n\r\n', 'hello world'],
] as const) {
  test(`${name} is left to node:http, and the download gets the body through it`, async (t) => {
    const { url, requests } = await rawServer(t, async (socket) => {
      socket.end(head + body);
    });
    t.is(await getPlainHttp(new URL(url), {}, undefined, 5000), undefined);
    t.is((await readAll(openSource(url, { idleMs: 5000 }))).toString(), 'hello world');
    // once by the plain reader, which handed over, and once by node:http (per download)
    t.is(requests.length, 3);
  });
}

test('a download through openSource reads the plain reader\'s body, paused and resumed by a slow consumer', async (t) => {
  const body = randomBytes(6 * 1024 * 1024);
  const { url, requests } = await rawServer(t, async (socket) => {
    socket.write(`HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n`);
    socket.end(body);
  });
  const download = openSource(url, { idleMs: 5000 });
  const parts: Buffer[] = [];
  for await (const piece of download) {
    parts.push(piece as Buffer);
    // a consumer slower than the socket (it hashes each piece a few times over): the reader must
    // stop and start again without losing bytes
    for (let i = 0; i < 8; i++) sha(piece as Buffer);
  }
  t.is(sha(Buffer.concat(parts)), sha(body));
  t.is(requests.length, 1);
  // the pieces come a buffer's worth at a time, not a socket read's
  t.true(parts.length <= body.length / (256 * 1024), `${parts.length} pieces`);
});
