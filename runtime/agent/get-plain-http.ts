/**
 * A GET over plain http whose body the socket reads straight into 512 KiB buffers (net.Socket's
 * `onread`), handed on as views of them, for the one download that carries a whole bundle.
 * node:http allocates a 64 KiB buffer for each socket read and runs its parser and a stream push
 * for each: a 72 MiB bundle took it about 150 ms of CPU on the install's busiest thread, reading
 * into reused memory about 25 ms, and the pieces after it come up to 512 KiB at a time, not 64 KiB.
 *
 * Only what that download needs: a response with a Content-Length body (S3, busybox, nginx and
 * s3rver all send one for a file). Anything else (a chunked body, no length, an address with a
 * user name) is left to node:http: `getPlainHttp` resolves `undefined` and the caller asks again.
 * The request ends with `Connection: close`, so the socket carries this one response.
 */
import { connect, type Socket } from 'node:net';
import { Readable } from 'node:stream';

export interface PlainHttpResponse extends Readable {
  readonly statusCode: number;
  /** Lowercase names; a header given twice is joined with ", ". */
  readonly headers: Readonly<Record<string, string>>;
  /** The whole Content-Length arrived. */
  readonly complete: boolean;
}

/**
 * Reads land in buffers of this size; a buffer's free tail below `minReadBytes` starts a new one.
 * Every stage after the download holds a piece or two, so this shows in the install's peak RSS: a
 * 1 GiB install peaked at 149.5 MiB with 1 MiB buffers, 141.8 with these (the most of four runs
 * each), in the same time; 164 MiB took some 20 ms longer than with 1 MiB, 20 less than with 256 KiB.
 */
const bodyBufferBytes = 512 << 10;
const minReadBytes = 64 << 10;
/** A status line and headers longer than this are refused. */
const maxHeaderBytes = 64 << 10;

class BodyReader extends Readable implements PlainHttpResponse {
  /** Body bytes received so far. */
  arrived = 0;
  /** buffer[start, filled) arrived and is not handed on yet. */
  private start: number;
  private flushing = false;

  /** The body's first `filled - bodyStart` bytes came with the headers, in `buffer`: they stay there. */
  constructor(
    private readonly socket: Socket,
    readonly statusCode: number,
    readonly headers: Record<string, string>,
    private readonly length: number,
    private buffer: Buffer,
    bodyStart: number,
    private filled: number,
  ) {
    // one buffer's worth waits here at most (a 1 GiB install peaked 3-4 MiB higher with two)
    super({ highWaterMark: bodyBufferBytes });
    this.start = bodyStart;
    this.filled = bodyStart;
    this.received(filled - bodyStart);
  }

  get complete(): boolean {
    return this.arrived === this.length;
  }

  /** Where the socket's next read lands. */
  target(): Buffer {
    if (this.buffer.length - this.filled < minReadBytes) {
      this.flush();
      this.buffer = Buffer.allocUnsafe(bodyBufferBytes);
      this.start = 0;
      this.filled = 0;
    }
    return this.buffer.subarray(this.filled);
  }

  /** `count` more bytes arrived at buffer[filled...]; false: pause the socket. */
  received(count: number): boolean {
    // a server that sends past its Content-Length: what follows is not part of this body
    const taken = Math.min(count, this.length - this.arrived);
    this.filled += taken;
    this.arrived += taken;
    if (this.complete) {
      this.flush();
      this.push(null);
      this.socket.destroy();
      return false;
    }
    // the pieces of one turn of the event loop go on as one
    if (!this.flushing) {
      this.flushing = true;
      setImmediate(() => this.flush());
    }
    return this.readableLength < this.readableHighWaterMark;
  }

  private flush(): void {
    this.flushing = false;
    if (this.filled === this.start || this.destroyed) return;
    const piece = this.buffer.subarray(this.start, this.filled);
    this.start = this.filled;
    if (!this.push(piece)) this.socket.pause();
  }

  override _read(): void {
    if (!this.complete) this.socket.resume();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.socket.destroy();
    callback(error);
  }
}

/** The status and headers from `head` (the bytes before the blank line), or undefined if malformed. */
function parseHead(head: string): { statusCode: number; headers: Record<string, string> } | undefined {
  const [statusLine, ...lines] = head.split('\r\n');
  const status = /^HTTP\/1\.[01] (\d{3})(?: |$)/.exec(statusLine ?? '');
  if (status === null) return undefined;
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon).trim().toLowerCase();
    const value = line.slice(colon + 1).trim();
    headers[name] = headers[name] === undefined ? value : `${headers[name]}, ${value}`;
  }
  return { statusCode: Number(status[1]), headers };
}

/**
 * GET `url` (http: only). Resolves with the response once its headers arrived, or `undefined`
 * when it is not one this reader takes (see above): the caller asks node:http instead. Rejects
 * like node:http's request: a connection that fails, no response within `idleMs`, `signal`.
 */
export async function getPlainHttp(url: URL, headers: Readonly<Record<string, string>>, signal: AbortSignal | undefined, idleMs: number): Promise<PlainHttpResponse | undefined> {
  if (url.protocol !== 'http:' || url.username !== '' || url.password !== '') return undefined;
  for (const [name, value] of Object.entries(headers)) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value)) throw new Error(`the ${name} header of the request to ${url.href} holds a line break`);
  }
  signal?.throwIfAborted();
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const port = Number(url.port || 80);
  const request = [`GET ${url.pathname}${url.search} HTTP/1.1`, `Host: ${url.host}`, 'Connection: close', ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`), '', ''].join('\r\n');

  let response: BodyReader | undefined;
  let headerDone = false;
  let settle!: { resolve: (value: PlainHttpResponse | undefined) => void; reject: (error: Error) => void };
  const settled = new Promise<PlainHttpResponse | undefined>((resolve, reject) => {
    settle = { resolve, reject };
  });
  const fail = (error: Error) => {
    if (headerDone) {
      response?.destroy(error);
      return;
    }
    headerDone = true;
    socket.destroy();
    settle.reject(error);
  };
  const onAbort = () => fail(signal!.reason instanceof Error ? signal!.reason : new Error(`GET ${url.href} was stopped`));
  signal?.addEventListener('abort', onAbort, { once: true });

  // the headers are read into the body's first buffer: the bytes after them stay where they landed
  let head = Buffer.allocUnsafe(bodyBufferBytes);
  let headBytes = 0;
  /** The headers ended at head[end]: the response, or undefined for node:http. */
  const open = (end: number): BodyReader | undefined => {
    headerDone = true;
    socket.setTimeout(0);
    const parsed = parseHead(head.subarray(0, end).toString('latin1'));
    const length = parsed?.headers['content-length'];
    if (parsed === undefined || parsed.headers['transfer-encoding'] !== undefined || length === undefined || !/^\d{1,15}$/.test(length)) return undefined;
    return new BodyReader(socket, parsed.statusCode, parsed.headers, Number(length), head, end + 4, headBytes);
  };
  const socket: Socket = connect({
    host,
    port,
    onread: {
      buffer: () => (response === undefined ? head.subarray(headBytes) : response.target()),
      callback: (count: number) => {
        if (response !== undefined) return response.received(count);
        if (headerDone) return false;
        headBytes += count;
        const end = head.subarray(0, headBytes).indexOf('\r\n\r\n');
        if (end < 0) {
          if (headBytes >= maxHeaderBytes) fail(new Error(`the response from ${url.href} has over ${maxHeaderBytes} bytes of headers`));
          return true;
        }
        response = open(end);
        head = Buffer.alloc(0);
        if (response === undefined) {
          socket.destroy();
          settle.resolve(undefined);
          return false;
        }
        settle.resolve(response);
        return !response.complete && response.readableLength < response.readableHighWaterMark;
      },
    },
  });
  socket.setTimeout(idleMs, () => fail(new Error(`no response from ${url.href} within ${idleMs / 1000} s`)));
  socket.once('connect', () => socket.write(request));
  socket.on('error', (error) => fail(error));
  socket.on('close', () => {
    signal?.removeEventListener('abort', onAbort);
    if (!headerDone) fail(new Error(`connection closed before the response headers from ${url.href}`));
    else if (response !== undefined && !response.complete && !response.destroyed) response.destroy(new Error(`connection closed after ${response.arrived} bytes of the body of ${url.href}`));
  });
  return settled;
}
