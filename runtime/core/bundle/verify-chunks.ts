/**
 * Verifies an uncompressed payload against the manifest's chunk hashes while it streams. Bytes are
 * released only once the chunk holding them matched, so a writer never writes unverified data;
 * memory is bounded by one chunk.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { KubeosError } from '../errors.js';
import type { ChunkHasher } from './chunk-hasher.js';
import type { ChunkPool } from './chunk-pool.js';
import type { PayloadInfo } from './manifest.js';
import type { StreamHasher } from './stream-hasher.js';

/** More bytes than the manifest names: E_HASH_MISMATCH. */
function checkLength(payload: PayloadInfo, total: number): void {
  if (total > payload.uncompressedSize) {
    throw new KubeosError('E_HASH_MISMATCH', `payload is longer than the ${payload.uncompressedSize} bytes the manifest names`, {
      details: { check: 'uncompressedSize', expected: payload.uncompressedSize },
    });
  }
}

/** At the end of input, fewer bytes than the manifest names: E_BUNDLE_TRUNCATED. */
function checkComplete(payload: PayloadInfo, total: number): void {
  if (total < payload.uncompressedSize) {
    throw new KubeosError('E_BUNDLE_TRUNCATED', `payload ended after ${total} of ${payload.uncompressedSize} bytes`, {
      details: { check: 'uncompressedSize', expected: payload.uncompressedSize, actual: total },
    });
  }
}

function checkWhole(payload: PayloadInfo, actual: string): void {
  if (actual !== payload.uncompressedSha256) {
    throw new KubeosError('E_HASH_MISMATCH', 'sha256 of the uncompressed payload does not match the manifest', {
      details: { check: 'uncompressedSha256', expected: payload.uncompressedSha256, actual },
    });
  }
}

function checkChunk(payload: PayloadInfo, index: number, actual: string): void {
  const expected = payload.chunks[index];
  if (actual !== expected) {
    throw new KubeosError('E_HASH_MISMATCH', `chunk ${index} of the payload does not match its sha256 in the manifest`, {
      details: { check: 'chunk', index, offset: index * payload.chunkSize, expected, actual },
    });
  }
}

export class ChunkVerifier {
  private readonly whole: Hash = createHash('sha256');
  private chunk: Hash = createHash('sha256');
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private index = 0;
  private total = 0;

  /** `wholeImage` false: skip the whole-image sha256 (the chunk hashes still cover every byte). */
  constructor(private readonly payload: PayloadInfo, private readonly wholeImage = true) {}

  /** Feeds bytes; returns the bytes of every chunk completed and verified by them. */
  update(data: Buffer): Buffer[] {
    const released: Buffer[] = [];
    const { chunkSize } = this.payload;
    checkLength(this.payload, this.total + data.length);
    this.total += data.length;
    if (this.wholeImage) this.whole.update(data);
    let offset = 0;
    while (offset < data.length) {
      const take = Math.min(chunkSize - this.pendingBytes, data.length - offset);
      const piece = data.subarray(offset, offset + take);
      this.chunk.update(piece);
      this.pending.push(piece);
      this.pendingBytes += take;
      offset += take;
      if (this.pendingBytes === chunkSize) released.push(...this.closeChunk());
    }
    return released;
  }

  /** Call at end of input: checks the size, the last chunk and the whole-image hash. */
  finish(): Buffer[] {
    checkComplete(this.payload, this.total);
    const released = this.pendingBytes > 0 ? this.closeChunk() : [];
    if (this.wholeImage) checkWhole(this.payload, this.whole.digest('hex'));
    return released;
  }

  private closeChunk(): Buffer[] {
    checkChunk(this.payload, this.index, this.chunk.digest('hex'));
    const released = this.pending;
    this.pending = [];
    this.pendingBytes = 0;
    this.chunk = createHash('sha256');
    this.index += 1;
    return released;
  }
}

/** The same checks as a Transform over an already-decompressed payload stream. */
export function verifyPayloadStream(payload: PayloadInfo): Transform {
  const verifier = new ChunkVerifier(payload);
  return new Transform({
    transform(data: Buffer, _encoding: BufferEncoding, callback: TransformCallback) {
      try {
        for (const piece of verifier.update(data)) this.push(piece);
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
    flush(callback: TransformCallback) {
      try {
        for (const piece of verifier.finish()) this.push(piece);
        callback();
      } catch (error) {
        callback(error as Error);
      }
    },
  });
}

/**
 * The chunk checks of ChunkVerifier with the hashing on a worker thread: incoming bytes are copied
 * into buffers from a pool, each full chunk is hashed by the ChunkHasher, and chunks are released
 * in order once they matched, as buffers the receiver owns until it gives them back to the pool.
 * Bytes are still released only after their chunk matched the signed manifest. Given a
 * StreamHasher (`whole`), it also checks the sha256 of the whole image, hashed on that worker from
 * the same buffers while the chunk hashes run on the other; a buffer is released once both read it.
 */
export class PooledChunkVerifier {
  private current: Buffer | undefined;
  private filled = 0;
  private index = 0;
  private total = 0;
  private hashing = 0;
  private chain: Promise<void> = Promise.resolve();
  private failure: unknown;
  private backlog: Buffer[] = [];
  private waitingForPool = false;
  private scratch: Buffer | undefined;

  constructor(
    private readonly payload: PayloadInfo,
    private readonly pool: ChunkPool,
    private readonly hasher: ChunkHasher,
    private readonly handlers: {
      /** Each verified chunk, in order. */
      release: (chunk: Buffer) => void;
      /** Input that update() asked to pause may flow again. */
      ready: () => void;
      /** A chunk did not match (or hashing failed): stop the input. */
      failed: (error: unknown) => void;
    },
    private readonly whole?: StreamHasher,
  ) {}

  /** True while it takes more input without buffering beyond the pool. */
  get ready(): boolean {
    return this.backlog.length === 0 && this.hashing < maxHashing && this.failure === undefined;
  }

  /** Takes bytes (kept by reference until copied); false: pause the input until `ready` is called. */
  update(data: Buffer): boolean {
    if (this.failure !== undefined) throw this.failure;
    checkLength(this.payload, this.total + data.length);
    this.total += data.length;
    this.backlog.push(data);
    this.fill();
    return this.ready;
  }

  /**
   * For a socket's `onread`: where the next read should land. Normally the free tail of the chunk
   * being filled, so bytes arrive in place and are never copied; a scratch buffer while input is
   * queued or no chunk buffer is free.
   */
  readTarget(): Buffer {
    if (this.backlog.length === 0 && this.failure === undefined) {
      if (this.current === undefined) {
        this.current = this.pool.take(this.payload.chunkSize);
        this.filled = 0;
      }
      if (this.current !== undefined) return this.current.subarray(this.filled);
    }
    this.scratch ??= Buffer.allocUnsafeSlow(scratchBytes);
    return this.scratch;
  }

  /** For a socket's `onread`: `nread` bytes arrived in `buffer` (from readTarget). False: pause. */
  received(nread: number, buffer: Buffer): boolean {
    try {
      const current = this.current;
      if (current === undefined || buffer.buffer !== current.buffer || buffer.byteOffset !== current.byteOffset + this.filled) {
        // the scratch buffer is read into again next time: keep a copy
        return this.update(Buffer.from(buffer.subarray(0, nread)));
      }
      checkLength(this.payload, this.total + nread);
      this.total += nread;
      this.filled += nread;
      if (this.filled === this.payload.chunkSize) this.submit();
      return this.ready;
    } catch (error) {
      if (this.failure === undefined) {
        this.failure = error;
        this.handlers.failed(error);
      }
      return false;
    }
  }

  /** At end of input: checks the size, hashes the last chunk, waits for every chunk's verdict. */
  async finish(): Promise<void> {
    checkComplete(this.payload, this.total);
    while (this.backlog.length > 0 && this.failure === undefined) {
      await new Promise<void>((resolve) => this.pool.whenFree(resolve));
      this.fill();
    }
    if (this.current !== undefined && this.filled > 0) this.submit();
    await this.chain;
    if (this.failure !== undefined) throw this.failure;
    if (this.whole !== undefined) checkWhole(this.payload, await this.whole.digest());
  }

  private fill(): void {
    const { chunkSize } = this.payload;
    while (this.backlog.length > 0 && this.failure === undefined) {
      if (this.current === undefined) {
        this.current = this.pool.take(chunkSize);
        this.filled = 0;
        if (this.current === undefined) {
          if (!this.waitingForPool) {
            this.waitingForPool = true;
            this.pool.whenFree(() => {
              this.waitingForPool = false;
              this.flow();
            });
          }
          return;
        }
      }
      const data = this.backlog[0]!;
      const take = Math.min(chunkSize - this.filled, data.length);
      data.copy(this.current, this.filled, 0, take);
      this.filled += take;
      if (take === data.length) this.backlog.shift();
      else this.backlog[0] = data.subarray(take);
      if (this.filled === chunkSize) this.submit();
    }
  }

  private flow(): void {
    this.fill();
    if (this.ready) this.handlers.ready();
  }

  private submit(): void {
    const buffer = this.current!;
    const length = this.filled;
    const index = this.index++;
    this.current = undefined;
    this.filled = 0;
    this.hashing += 1;
    const hashed = this.hasher.digest(buffer, length);
    // judged in turn below; a worker failure before its turn must not count as unhandled
    hashed.catch(() => {});
    // in image order, like the buffers; awaited below, handled now so a failure never goes unhandled
    const summed = this.whole?.update(buffer, length);
    summed?.catch(() => {});
    // verdicts in order, whatever order the hashes finish in
    this.chain = this.chain.then(() => hashed).then(async (digest) => {
      await summed;
      this.hashing -= 1;
      if (this.failure !== undefined) {
        this.pool.give(buffer);
        return;
      }
      try {
        checkChunk(this.payload, index, digest);
      } catch (error) {
        this.pool.give(buffer);
        throw error;
      }
      this.handlers.release(buffer.subarray(0, length));
      this.flow();
    }).catch((error: unknown) => {
      if (this.failure !== undefined) return;
      this.failure = error;
      this.handlers.failed(error);
    });
  }
}

/** Chunks hashed at once; two keep the worker busy while the next chunk fills. */
const maxHashing = 2;
/** Reads that cannot land in a chunk buffer land here (a socket read is a few hundred KiB). */
const scratchBytes = 1 << 20;
