/** Hashes an uncompressed image per chunk and as a whole while it passes through, for the manifest. */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

export class ChunkHasher extends Transform {
  readonly chunks: string[] = [];
  bytes = 0;
  private readonly whole: Hash = createHash('sha256');
  private chunk: Hash = createHash('sha256');
  private inChunk = 0;
  private wholeHex: string | undefined;

  constructor(private readonly chunkSize: number, private readonly onBytes: (bytes: number) => void = () => {}) {
    super();
  }

  override _transform(data: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += data.length;
    this.whole.update(data);
    let offset = 0;
    while (offset < data.length) {
      const take = Math.min(this.chunkSize - this.inChunk, data.length - offset);
      this.chunk.update(data.subarray(offset, offset + take));
      this.inChunk += take;
      offset += take;
      if (this.inChunk === this.chunkSize) this.closeChunk();
    }
    this.onBytes(this.bytes);
    callback(null, data);
  }

  override _flush(callback: TransformCallback): void {
    if (this.inChunk > 0) this.closeChunk();
    callback();
  }

  sha256(): string {
    this.wholeHex ??= this.whole.digest('hex');
    return this.wholeHex;
  }

  private closeChunk(): void {
    this.chunks.push(this.chunk.digest('hex'));
    this.chunk = createHash('sha256');
    this.inChunk = 0;
  }
}
