/**
 * An uncompressed archive's bytes, for a pass that wants its headers and a few small entries:
 * the data of an entry it skips is not read from the file but given as zeros, which tar-stream
 * counts its way past like any data. Finding an OCI archive's JSON documents then reads its
 * headers, not its layers (the first pass over a 500 MB archive read all of it: 0.16 s).
 */
import type { FileHandle } from 'node:fs/promises';
import { Readable } from 'node:stream';

const zeros = Buffer.alloc(1 << 20);

export class EntrySkippingReader extends Readable {
  private position = 0;
  /** Bytes before this offset that were not read yet are given as zeros. */
  private skipEnd = 0;

  constructor(private readonly file: FileHandle, private readonly size: number, private readonly readBytes: number) {
    super({ highWaterMark: readBytes });
  }

  /** The bytes of [start, end) not read yet will not be read (end stops at the file's end). */
  skip(start: number, end: number): void {
    if (start <= this.position) this.skipEnd = Math.max(this.skipEnd, Math.min(end, this.size));
  }

  override _read(): void {
    if (this.position < this.skipEnd) {
      const n = Math.min(zeros.length, this.skipEnd - this.position);
      this.position += n;
      this.push(zeros.subarray(0, n));
      return;
    }
    const buffer = Buffer.allocUnsafe(this.readBytes);
    this.file.read(buffer, 0, buffer.length, this.position).then(({ bytesRead }) => {
      if (bytesRead === 0) {
        this.push(null);
        return;
      }
      this.position += bytesRead;
      this.push(buffer.subarray(0, bytesRead));
    }, (error: unknown) => this.destroy(error as Error));
  }
}
