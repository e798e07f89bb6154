/** A pass-through that hashes and counts what flows by, so one read serves copying and hashing. */
import { createHash, type Hash } from 'node:crypto';
import { Transform, type TransformCallback } from 'node:stream';

export class HashTap extends Transform {
  bytes = 0;
  private readonly hash: Hash = createHash('sha256');
  private hex: string | undefined;

  /** `hashing` false: count bytes only (see ReadBundleOptions.chunksOnly). */
  constructor(private readonly onBytes?: (bytes: number) => void, private readonly hashing = true) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.bytes += chunk.length;
    if (this.hashing) this.hash.update(chunk);
    this.onBytes?.(this.bytes);
    callback(null, chunk);
  }

  /** The sha256 (hex) of everything seen; call once the stream has ended. */
  digest(): string {
    this.hex ??= this.hash.digest('hex');
    return this.hex;
  }
}
