/**
 * tar-stream decodes PAX values as UTF-8, which alters binary xattrs (ACLs, file capabilities) in
 * GNU tar's and Go's `SCHILY.xattr.NAME` records. This pass-through rewrites each such record
 * into libarchive's `LIBARCHIVE.xattr.NAME` form (base64), which survives decoding exactly; every
 * other byte of the archive flows through unchanged.
 */
import { Transform, type TransformCallback } from 'node:stream';

const block = 512;
const maxPaxBytes = 16 * 1024 * 1024;

function readSize(header: Buffer): number {
  const field = header.subarray(124, 136);
  if ((field[0] ?? 0) & 0x80) {
    let value = 0;
    for (let i = 1; i < field.length; i++) value = value * 256 + (field[i] ?? 0);
    return value;
  }
  const text = field.toString('latin1').replace(/[\0 ]+/g, ' ').trim();
  return text === '' ? 0 : parseInt(text, 8);
}

function writeSizeAndChecksum(header: Buffer, size: number): void {
  header.write(`${size.toString(8).padStart(11, '0')}\0`, 124, 12, 'latin1');
  header.fill(0x20, 148, 156);
  let sum = 0;
  for (const byte of header) sum += byte;
  header.write(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8, 'latin1');
}

function record(key: string, value: Buffer): Buffer {
  const body = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
  let length = body.length + 1;
  while (String(length).length + body.length !== length) length = String(length).length + body.length;
  return Buffer.concat([Buffer.from(String(length)), body]);
}

/** Pure: PAX data with every SCHILY.xattr record turned into a base64 LIBARCHIVE.xattr record. */
export function rewritePaxData(data: Buffer): Buffer {
  const out: Buffer[] = [];
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    const length = space < 0 ? NaN : parseInt(data.subarray(at, space).toString('latin1'), 10);
    if (!Number.isFinite(length) || length <= 0 || at + length > data.length) {
      out.push(data.subarray(at));
      break;
    }
    const rec = data.subarray(at, at + length);
    const eq = rec.indexOf(0x3d, space - at);
    const key = eq < 0 ? '' : rec.subarray(space - at + 1, eq).toString('utf8');
    if (key.startsWith('SCHILY.xattr.')) {
      out.push(record(`LIBARCHIVE.xattr.${encodeURIComponent(key.slice(13))}`, Buffer.from(rec.subarray(eq + 1, rec.length - 1).toString('base64'))));
    } else {
      out.push(rec);
    }
    at += length;
  }
  return Buffer.concat(out);
}

export class RewritePax extends Transform {
  private pending: Buffer = Buffer.alloc(0);
  /** Bytes of the current entry (data and padding) to pass through untouched. */
  private passing = 0;
  /** A PAX header waiting for its data: the header and the padded data length. */
  private pax: { header: Buffer; size: number; padded: number } | undefined;

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.pending = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    try {
      this.drain();
      callback();
    } catch (error) {
      callback(error as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    if (this.pax !== undefined) this.push(this.pax.header);
    if (this.pending.length > 0) this.push(this.pending);
    callback();
  }

  private drain(): void {
    for (;;) {
      if (this.passing > 0) {
        if (this.pending.length === 0) return;
        const n = Math.min(this.passing, this.pending.length);
        this.push(this.pending.subarray(0, n));
        this.pending = this.pending.subarray(n);
        this.passing -= n;
        continue;
      }
      if (this.pax !== undefined) {
        if (this.pending.length < this.pax.padded) return;
        const data = rewritePaxData(this.pending.subarray(0, this.pax.size));
        this.pending = this.pending.subarray(this.pax.padded);
        const header = Buffer.from(this.pax.header);
        writeSizeAndChecksum(header, data.length);
        const padding = Buffer.alloc((block - (data.length % block)) % block);
        this.push(Buffer.concat([header, data, padding]));
        this.pax = undefined;
        continue;
      }
      if (this.pending.length < block) return;
      const header = this.pending.subarray(0, block);
      this.pending = this.pending.subarray(block);
      const size = readSize(header);
      const padded = Math.ceil(size / block) * block;
      const type = String.fromCharCode(header[156] ?? 0);
      if ((type === 'x' || type === 'g') && padded <= maxPaxBytes && header.some((b) => b !== 0)) {
        this.pax = { header, size, padded };
      } else {
        this.push(header);
        this.passing = header.some((b) => b !== 0) ? padded : 0;
      }
    }
  }
}
