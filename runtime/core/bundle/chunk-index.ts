/**
 * The chunk index of an uncompressed image: where its chunks start, how long they are and their
 * sha256. Two rules: content-defined chunks (a FastCDC-style gear hash with normalized chunking,
 * so an insertion moves only the boundaries near it) and fixed-size blocks (for comparison, and
 * what format 1 signs). Pure: bytes go in through `push`, chunks come out; no I/O apart from
 * `indexStream`, which only feeds a stream to a Chunker. Memory is one sha256 state whatever the
 * input size: a chunk's bytes are hashed as they pass and never kept.
 *
 * The gear table and the masks below are part of any index that names the rule `cdc`: change
 * them and every stored chunk stops matching. A new table is a new rule name.
 */
import { createHash, type Hash } from 'node:crypto';
import { KubeosError } from '../errors.js';
import { gearWindowBytes, makeGearScanner, type GearScanner } from './gear-scan.js';

export interface Chunk {
  offset: number;
  length: number;
  /** sha256 (hex) of the chunk's bytes. */
  sha256: string;
}

export type ChunkRule =
  | { kind: 'cdc'; min: number; avg: number; max: number }
  | { kind: 'fixed'; size: number };

/**
 * The one content-defined rule of kubeos (see docs/deltas.md for the measurement): 64 KiB on
 * average, never under 16 KiB nor over 256 KiB.
 */
export const defaultCdcRule = { kind: 'cdc', min: 16 * 1024, avg: 64 * 1024, max: 256 * 1024 } as const satisfies ChunkRule;

/** 256 pseudo-random 32-bit words from sha256 of a fixed label: the same on every machine forever. */
function makeGearTable(): Uint32Array {
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i += 8) {
    const words = createHash('sha256').update(`kubeos-cdc-gear-v1:${i / 8}`).digest();
    for (let j = 0; j < 8; j++) table[i + j] = words.readUInt32BE(j * 4);
  }
  return table;
}

const gear = makeGearTable();
/** One per thread, made on first use; null where WebAssembly cannot be had (the loop in JavaScript then). */
let sharedScanner: GearScanner | null | undefined;

/**
 * A mask of `bits` one bits at the top of the 32-bit hash. Shifting the hash left by one a byte
 * means bit k depends on the last k+1 bytes only: the top bits see the widest window (32 bytes).
 */
function topBits(bits: number): number {
  return bits >= 32 ? -1 : ~((1 << (32 - bits)) - 1);
}

function describeRule(rule: ChunkRule): string {
  return rule.kind === 'fixed' ? `fixed ${rule.size}` : `cdc ${rule.min}/${rule.avg}/${rule.max}`;
}

/** Refuses a rule the chunker cannot honour, naming the bad value. */
export function checkChunkRule(rule: ChunkRule): void {
  const problems: string[] = [];
  const positive = (name: string, v: number) => {
    if (!Number.isSafeInteger(v) || v < 64) problems.push(`${name} must be an integer >= 64, is ${v}`);
  };
  if (rule.kind === 'fixed') positive('size', rule.size);
  else {
    positive('min', rule.min);
    positive('avg', rule.avg);
    positive('max', rule.max);
    if (!(rule.min < rule.avg && rule.avg < rule.max)) problems.push(`min < avg < max must hold, is ${rule.min} / ${rule.avg} / ${rule.max}`);
    if (Number.isSafeInteger(rule.avg) && (rule.avg & (rule.avg - 1)) !== 0) problems.push(`avg must be a power of two, is ${rule.avg}`);
  }
  if (problems.length > 0) {
    throw new KubeosError('E_USAGE', `chunk rule ${describeRule(rule)} is invalid: ${problems.join('; ')}`, { details: { rule, problems } });
  }
}

/**
 * Streaming chunker: `push` any pieces of the input in order, then `finish`. Chunk boundaries do
 * not depend on how the input was cut into pieces.
 */
export class Chunker {
  private readonly min: number;
  private readonly avg: number;
  private readonly max: number;
  /** Normalized chunking (level 2): harder to cut before avg, easier after, so sizes bunch near avg. */
  private readonly maskHard: number;
  private readonly maskEasy: number;
  private readonly fixed: boolean;
  private hash: Hash = createHash('sha256');
  private roll = 0;
  /** Bytes of the current chunk seen so far. */
  private length = 0;
  private offset = 0;
  private readonly scanner: GearScanner | undefined;

  /** `options.wasm` false: the gear loop in JavaScript (as where WebAssembly cannot be had; the tests compare the two). */
  constructor(readonly rule: ChunkRule = defaultCdcRule, options: { wasm?: boolean } = {}) {
    checkChunkRule(rule);
    if (rule.kind === 'fixed') {
      this.fixed = true;
      this.min = this.avg = this.max = rule.size;
      this.maskHard = this.maskEasy = 0;
    } else {
      this.fixed = false;
      this.min = rule.min;
      this.avg = rule.avg;
      this.max = rule.max;
      const bits = Math.log2(rule.avg);
      this.maskHard = topBits(bits + 2);
      this.maskEasy = topBits(bits - 2);
    }
    if (!this.fixed && options.wasm !== false) {
      if (sharedScanner === undefined) sharedScanner = makeGearScanner(gear) ?? null;
      this.scanner = sharedScanner ?? undefined;
    }
  }

  /** The chunks that end inside `data` (in order); the bytes after the last cut stay pending. */
  push(data: Uint8Array): Chunk[] {
    if (this.scanner === undefined || data.length <= gearWindowBytes) return this.pushWindow(data, []);
    const out: Chunk[] = [];
    for (let at = 0; at < data.length; at += gearWindowBytes) this.pushWindow(data.subarray(at, at + gearWindowBytes), out);
    return out;
  }

  /** push() of at most one scanner window; the scans read it from the scanner's memory. */
  private pushWindow(data: Uint8Array, out: Chunk[]): Chunk[] {
    // the scanner is shared: it holds this window only until this call returns, which it does
    // without waiting on anything
    this.scanner?.load(data);
    let start = 0;
    while (start < data.length) {
      const cut = this.fixed ? this.fixedCut(data, start) : this.findCut(data, start);
      if (cut < 0) {
        this.hash.update(start === 0 ? data : data.subarray(start));
        this.length += data.length - start;
        break;
      }
      this.hash.update(data.subarray(start, cut));
      this.length += cut - start;
      out.push(this.emit());
      start = cut;
    }
    return out;
  }

  /** The last chunk (shorter than the rule's minimum, possibly), or none when nothing is pending. */
  finish(): Chunk[] {
    return this.length === 0 ? [] : [this.emit()];
  }

  private emit(): Chunk {
    const chunk = { offset: this.offset, length: this.length, sha256: this.hash.digest('hex') };
    this.offset += this.length;
    this.length = 0;
    this.roll = 0;
    this.hash = createHash('sha256');
    return chunk;
  }

  private fixedCut(data: Uint8Array, start: number): number {
    const need = this.max - this.length;
    return data.length - start >= need ? start + need : -1;
  }

  /**
   * Index in `data` just after the current chunk's last byte, or -1 when it does not end in
   * `data`. The first `min` bytes of a chunk are skipped without hashing (FastCDC's cut-point
   * skipping); the hash then rolls from zero, and a chunk ends after the byte where the masked
   * bits are all zero, or at `max`.
   */
  private findCut(data: Uint8Array, start: number): number {
    const end = data.length;
    let i = start;
    let seen = this.length;
    if (seen < this.min) {
      const skip = Math.min(this.min - seen, end - i);
      i += skip;
      seen += skip;
      if (i === end) return -1;
    }
    // before avg: the hard mask
    const hardEnd = Math.min(end, i + Math.max(0, this.avg - seen));
    const hardCut = this.rollGear(data, i, hardEnd, this.maskHard);
    if (hardCut >= 0) return hardCut;
    i = hardEnd;
    seen = this.length + (i - start);
    // from avg to max: the easy mask
    const easyEnd = Math.min(end, i + (this.max - seen));
    const easyCut = this.rollGear(data, i, easyEnd, this.maskEasy);
    if (easyCut >= 0) return easyCut;
    i = easyEnd;
    if (this.length + (i - start) >= this.max) return i;
    return -1;
  }

  /**
   * Rolls the gear hash over data[from, to): the index just after the first byte where the masked
   * bits are all zero, or -1. The hash carries on in `roll`.
   */
  private rollGear(data: Uint8Array, from: number, to: number, mask: number): number {
    if (from >= to) return -1;
    const scanner = this.scanner;
    if (scanner !== undefined) {
      const cut = scanner.scan(from, to, mask, this.roll);
      this.roll = scanner.hash;
      return cut;
    }
    let h = this.roll;
    for (let i = from; i < to; i++) {
      h = ((h << 1) + gear[data[i]!]!) | 0;
      if ((h & mask) === 0) {
        this.roll = h;
        return i + 1;
      }
    }
    this.roll = h;
    return -1;
  }
}

/** The chunks of a whole buffer (tests, small inputs). */
export function indexBuffer(data: Uint8Array, rule: ChunkRule = defaultCdcRule): Chunk[] {
  const chunker = new Chunker(rule);
  return [...chunker.push(data), ...chunker.finish()];
}

/** The chunks of a stream (a file, a decompressed payload), hashed as they pass. */
export async function indexStream(source: AsyncIterable<Uint8Array>, rule: ChunkRule = defaultCdcRule, onChunk?: (chunk: Chunk) => void): Promise<Chunk[]> {
  const chunker = new Chunker(rule);
  const chunks: Chunk[] = [];
  const keep = (list: Chunk[]) => {
    for (const c of list) {
      chunks.push(c);
      onChunk?.(c);
    }
  };
  for await (const data of source) keep(chunker.push(data));
  keep(chunker.finish());
  return chunks;
}
