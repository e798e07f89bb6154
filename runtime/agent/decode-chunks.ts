/**
 * zstd frames of fetched chunks, decompressed in batches: the frames that arrive while one zstd
 * runs go to the next one together, in one stream (zstd decodes concatenated frames), and the
 * output is cut at the chunk lengths the signed index gives. One process per batch instead of one
 * per chunk: a delta of thousands of chunks would otherwise spend seconds starting processes.
 * A batch that fails is decoded again frame by frame, so the damaged chunk is the one reported.
 */
import { KubeosError } from '../core/errors.js';
import { startZstd } from '../core/bundle/run-zstd.js';

interface Job {
  frame: Buffer;
  length: number;
  url: string;
  resolve: (data: Buffer) => void;
  reject: (error: unknown) => void;
}

/**
 * A batch decodes to at most this many bytes (the rest wait for the next). Each zstd costs a
 * spawn, whose fork takes longer the bigger this process is (about 12 ms at 100 MiB of RSS, 24 ms
 * at 300, measured): fewer, bigger batches. The bytes are the chunks' own buffers, held once.
 */
const maxBatchBytes = 32 << 20;

export class ChunkDecoder {
  private queue: Job[] = [];
  private running = false;
  /** zstd processes started (the bench and the tests read it). */
  processes = 0;

  constructor(private readonly signal: AbortSignal | undefined) {}

  /** The decompressed frame: exactly `length` bytes, or one more when the frame holds more (the caller's length check fails it). */
  decode(frame: Buffer, length: number, url: string): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.queue.push({ frame, length, url, resolve, reject });
      if (!this.running) void this.drain();
    });
  }

  private async drain(): Promise<void> {
    this.running = true;
    try {
      while (this.queue.length > 0) {
        let bytes = 0;
        let count = 0;
        while (count < this.queue.length && (count === 0 || bytes + this.queue[count]!.length <= maxBatchBytes)) bytes += this.queue[count++]!.length;
        const batch = this.queue.splice(0, count);
        try {
          const parts = await this.run(batch);
          batch.forEach((job, i) => job.resolve(parts[i]!));
        } catch (error) {
          if (batch.length === 1 || this.signal?.aborted) batch.forEach((job) => job.reject(error));
          else for (const job of batch) await this.run([job]).then((parts) => job.resolve(parts[0]!), job.reject);
        }
      }
    } finally {
      this.running = false;
    }
  }

  /**
   * One zstd for the batch; its output copied straight into a buffer per job, cut at each job's
   * length (no whole-batch buffer: the batch's bytes are held once). A frame that holds more fails
   * the batch.
   */
  private async run(batch: Job[]): Promise<Buffer[]> {
    this.processes++;
    const child = await startZstd(['-d', '-c', '-q', '--no-progress'], { signal: this.signal, timeoutMs: 60_000 });
    const expected = batch.reduce((sum, job) => sum + job.length, 0);
    const out: Buffer[] = [];
    let current: Buffer | undefined;
    let filled = 0;
    let received = 0;
    child.stdout.on('data', (piece: Buffer) => {
      received += piece.length;
      // more than the chunks is already wrong: stop zstd rather than take a decompression bomb
      if (received > expected) {
        child.kill();
        return;
      }
      let at = 0;
      while (at < piece.length) {
        if (current === undefined) {
          current = Buffer.allocUnsafe(batch[out.length]!.length);
          filled = 0;
        }
        const take = Math.min(current.length - filled, piece.length - at);
        piece.copy(current, filled, at, at + take);
        filled += take;
        at += take;
        if (filled === current.length) {
          out.push(current);
          current = undefined;
        }
      }
    });
    for (const job of batch) child.stdin.write(job.frame);
    child.stdin.end();
    const [result] = await Promise.all([child.exited, new Promise((resolve) => child.stdout.once('close', resolve))]);
    const first = batch[0]!;
    if (received > expected) {
      if (batch.length === 1) return [Buffer.alloc(first.length + 1)];
      throw new Error('the frames hold more than their chunks');
    }
    if (result.exitCode !== 0) {
      this.signal?.throwIfAborted();
      throw new KubeosError('E_DELTA', `chunk ${first.url}${batch.length > 1 ? ` (or one of the ${batch.length - 1} after it)` : ''} is not a valid zstd frame: ${result.stderr || `zstd exit ${result.exitCode ?? 'by signal'}`}`, { details: { url: first.url, stderr: result.stderr } });
    }
    if (received < expected && batch.length > 1) throw new Error('the frames hold fewer bytes than their chunks');
    // a single frame short of its chunk comes back short: its length check fails it
    if (current !== undefined) out.push(current.subarray(0, filled));
    return out;
  }
}
