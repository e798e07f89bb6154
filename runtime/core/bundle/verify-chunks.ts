/**
 * Verifies an uncompressed payload against the manifest's chunk hashes while it streams. Bytes are
 * released only once the chunk holding them matched, so a writer never writes unverified data;
 * memory is bounded by one chunk.
 */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';
import { KubeosError } from '../errors.js';
import type { PayloadInfo } from './manifest.js';

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
    const { chunkSize, uncompressedSize } = this.payload;
    if (this.total + data.length > uncompressedSize) {
      throw new KubeosError('E_HASH_MISMATCH', `payload is longer than the ${uncompressedSize} bytes the manifest names`, {
        details: { check: 'uncompressedSize', expected: uncompressedSize },
      });
    }
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
    const { uncompressedSize, uncompressedSha256 } = this.payload;
    if (this.total < uncompressedSize) {
      throw new KubeosError('E_BUNDLE_TRUNCATED', `payload ended after ${this.total} of ${uncompressedSize} bytes`, {
        details: { check: 'uncompressedSize', expected: uncompressedSize, actual: this.total },
      });
    }
    const released = this.pendingBytes > 0 ? this.closeChunk() : [];
    const actual = this.wholeImage ? this.whole.digest('hex') : uncompressedSha256;
    if (actual !== uncompressedSha256) {
      throw new KubeosError('E_HASH_MISMATCH', 'sha256 of the uncompressed payload does not match the manifest', {
        details: { check: 'uncompressedSha256', expected: uncompressedSha256, actual },
      });
    }
    return released;
  }

  private closeChunk(): Buffer[] {
    const expected = this.payload.chunks[this.index];
    const actual = this.chunk.digest('hex');
    if (actual !== expected) {
      throw new KubeosError('E_HASH_MISMATCH', `chunk ${this.index} of the payload does not match its sha256 in the manifest`, {
        details: { check: 'chunk', index: this.index, offset: this.index * this.payload.chunkSize, expected, actual },
      });
    }
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
