/** zstd as a streaming child through exec.ts, with an exit report that never rejects. */
import { randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type OnReadOpts, type Socket } from 'node:net';
import type { Readable, Writable } from 'node:stream';
import { spawnTool } from '../exec.js';

export interface ZstdChild {
  stdin: Writable;
  /** zstd's output; with `onread`, a socket that hands it to that callback instead of 'data'. */
  stdout: Readable | Socket;
  /** Resolves on exit; stderr is zstd's message for errors. */
  exited: Promise<{ exitCode: number | undefined; stderr: string; cancelled: boolean }>;
  kill(): void;
}

export interface ZstdOptions {
  signal?: AbortSignal | undefined;
  timeoutMs: number;
  /**
   * Read zstd's output into buffers the caller supplies (net.Socket's `onread`), instead of a new
   * buffer per read: zstd writes to one end of a local socket pair and the caller's memory
   * receives it, a few hundred KiB per read.
   */
  onread?: OnReadOpts;
}

export async function startZstd(args: readonly string[], options: ZstdOptions): Promise<ZstdChild> {
  const pair = options.onread === undefined ? undefined : await socketPair(options.onread);
  let spawned: Awaited<ReturnType<typeof spawnTool>>;
  try {
    spawned = await spawnTool('zstd', args, { signal: options.signal, timeoutMs: options.timeoutMs, stdout: pair?.childFd ?? 'pipe' });
  } finally {
    // zstd has its own copy of the socket now (or none, if it did not start)
    pair?.childEnd.destroy();
  }
  const { child } = spawned;
  const exited = Promise.resolve(child).then(
    (result) => ({ exitCode: result.exitCode, stderr: Buffer.from((result.stderr as Uint8Array | undefined) ?? []).toString('utf8').trim(), cancelled: result.isCanceled === true }),
    (error: unknown) => ({ exitCode: undefined, stderr: String(error), cancelled: false }),
  );
  // EPIPE after an early exit is judged by the exit code, not thrown from the pipe.
  child.stdin?.on('error', () => {});
  return { stdin: child.stdin!, stdout: pair?.ours ?? child.stdout!, exited, kill: () => child.kill('SIGKILL') };
}

/**
 * Two connected ends of a Unix socket with an abstract name (nothing on disk), one for the child.
 * The name is visible to other local users, so the end handed to zstd is the connection that
 * presents a random token first: a stranger who connects is dropped, never given zstd's output.
 */
async function socketPair(onread: OnReadOpts): Promise<{ ours: Socket; childEnd: Socket; childFd: number }> {
  const token = randomBytes(32);
  const server = createServer();
  try {
    server.listen(`\0kubeos-zstd-${process.pid}-${randomUUID()}`);
    await once(server, 'listening');
    const accepted = new Promise<Socket>((resolve) => {
      server.on('connection', (socket: Socket) => {
        readExactly(socket, token.length).then((presented) => {
          if (presented.equals(token)) resolve(socket);
          else socket.destroy();
        }, () => socket.destroy());
      });
    });
    // the token goes out before onread takes over: it only governs what comes in
    const ours = connect({ path: server.address() as string, onread });
    await once(ours, 'connect');
    ours.write(token);
    const childEnd = await accepted;
    const childFd = (childEnd as unknown as { _handle?: { fd?: number } })._handle?.fd;
    if (childFd === undefined || childFd < 0) throw new Error('no file descriptor for the zstd socket');
    return { ours, childEnd, childFd };
  } finally {
    server.close();
  }
}

function readExactly(socket: Socket, length: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let got = 0;
    const timer = setTimeout(() => reject(new Error('no token')), 5_000);
    socket.on('data', (data: Buffer) => {
      parts.push(data);
      got += data.length;
      if (got >= length) {
        clearTimeout(timer);
        socket.pause();
        socket.removeAllListeners('data');
        resolve(Buffer.concat(parts).subarray(0, length));
      }
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}
