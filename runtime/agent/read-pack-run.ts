/**
 * A run of chunks that sit back to back in a release's pack, read as one stream: one Range
 * request for all their frames, its body piped straight into one `zstd -d` (zstd decodes
 * concatenated frames), and zstd's output cut at the chunks' signed lengths, in order. That is the
 * full install's shape (one request, one decoder, backpressure from the writer back to the
 * socket) for the part of an image a host lacks: a delta of thousands of chunks costs a few
 * processes, not one per chunk or batch (each spawn forks this process: tens of milliseconds
 * at a few hundred MiB of RSS).
 *
 * Nothing here is trusted: the caller checks each chunk's sha256 against the signed index. A run
 * that fails (HTTP, a range the server does not honour, zstd, more or fewer bytes than the
 * frames hold) still hands out the chunks zstd decoded before it, then rejects the next one and
 * every one after; the caller fetches those from their own chunk files.
 */
import { KubeosError } from '../core/errors.js';
import { startZstd, type ZstdChild } from '../core/bundle/run-zstd.js';
import type { ChunkFetcher, PackFrame, RangeBody } from './fetch-chunks.js';

/** Decoded bytes a run holds before it stops reading zstd (which then stops reading the socket). */
const bufferedLimit = 8 << 20;

export class PackRun {
  private readonly pieces: Buffer[] = [];
  private buffered = 0;
  private next = 0;
  private failure: unknown;
  private ended = false;
  private waiter: (() => void) | undefined;
  private child: ZstdChild | undefined;
  private body: RangeBody | undefined;
  private readonly expected: number;
  private produced = 0;

  constructor(
    private readonly fetcher: ChunkFetcher,
    private readonly url: string,
    readonly frames: readonly PackFrame[],
    private readonly signal: AbortSignal | undefined,
  ) {
    this.expected = frames.reduce((sum, frame) => sum + frame.length, 0);
    this.start().catch((error: unknown) => this.fail(error));
  }

  /** Chunks of this run not yet taken. */
  get left(): number {
    return this.frames.length - this.next;
  }

  /** The next chunk's bytes (exactly its signed length), in order. */
  async take(): Promise<Buffer> {
    const frame = this.frames[this.next];
    if (frame === undefined) throw new Error('a pack run was asked for more chunks than it holds');
    while (this.failure === undefined && this.buffered < frame.length && !this.ended) {
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
    // what zstd decoded before a failure is handed out still (the caller checks every chunk)
    if (this.buffered < frame.length) throw this.failure ?? this.problem(`ended ${this.expected - this.produced} bytes short of its chunks`);
    this.next++;
    const data = this.cut(frame.length);
    if (this.buffered < bufferedLimit) this.child?.stdout.resume();
    return data;
  }

  close(): void {
    this.fail(new Error('the pack run was closed'));
    this.pieces.length = 0;
    this.buffered = 0;
  }

  private async start(): Promise<void> {
    const first = this.frames[0]!;
    const last = this.frames[this.frames.length - 1]!;
    // zstd first: the body must not flow before there is somewhere to pipe it
    const child = await startZstd(['-d', '-c', '-q', '--no-progress'], { signal: this.signal, timeoutMs: 60 * 60_000 });
    this.child = child;
    if (this.failure !== undefined) {
      child.kill();
      return;
    }
    const body = await this.fetcher.openRange(this.url, first.offset, last.offset + last.size).catch((error: unknown) => {
      child.kill();
      throw error;
    });
    this.body = body;
    if (this.failure !== undefined) {
      body.destroy();
      return;
    }
    child.stdout.on('data', (piece: Buffer) => {
      this.produced += piece.length;
      if (this.produced > this.expected) {
        this.fail(this.problem(`decodes to more than its chunks' ${this.expected} bytes`));
        return;
      }
      this.pieces.push(piece);
      this.buffered += piece.length;
      if (this.buffered >= bufferedLimit) child.stdout.pause();
      this.wake();
    });
    body.stream.on('error', (error: Error) => this.fail(error));
    // the body into zstd with backpressure; a broken body or zstd fails the run
    body.stream.pipe(child.stdin);
    child.stdin.on('error', () => {});
    const [result] = await Promise.all([child.exited, new Promise((resolve) => child.stdout.once('close', resolve))]);
    if (this.failure !== undefined) return;
    if (!body.complete()) this.fail(this.problem('lost its connection before all its frames arrived'));
    else if (result.exitCode !== 0) this.fail(this.problem(`is not valid zstd: ${result.stderr || `zstd exit ${result.exitCode ?? 'by signal'}`}`));
    this.ended = true;
    this.wake();
  }

  private cut(length: number): Buffer {
    const head = this.pieces[0]!;
    let data: Buffer;
    if (head.length === length) {
      data = this.pieces.shift()!;
    } else if (head.length > length) {
      data = head.subarray(0, length);
      this.pieces[0] = head.subarray(length);
    } else {
      data = Buffer.allocUnsafe(length);
      let filled = 0;
      while (filled < length) {
        const piece = this.pieces[0]!;
        const take = Math.min(piece.length, length - filled);
        piece.copy(data, filled, 0, take);
        filled += take;
        if (take === piece.length) this.pieces.shift();
        else this.pieces[0] = piece.subarray(take);
      }
    }
    this.buffered -= length;
    return data;
  }

  private problem(what: string): KubeosError {
    const first = this.frames[0]!;
    const last = this.frames[this.frames.length - 1]!;
    return new KubeosError('E_DELTA', `the pack run ${this.url} bytes ${first.offset}-${last.offset + last.size - 1} (${this.frames.length} chunks) ${what}`, { details: { url: this.url } });
  }

  private fail(error: unknown): void {
    if (this.failure !== undefined) return;
    this.failure = error;
    this.child?.kill();
    this.body?.destroy();
    this.wake();
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }
}
