/**
 * The gear hash's inner loop (chunk-index.ts) in WebAssembly. The same loop in JavaScript took
 * 1.2-1.6 s a GiB here and this takes about 0.63 s, copying the input in included: most of what
 * cutting an index cost beside its sha256. The module is small enough to be written out below as
 * bytes (no toolchain at build time); it holds the gear table at bytes 0-1023 of its memory and a
 * window of the input after it.
 *
 *   (func (export "scan") (param $i i32) (param $end i32) (param $mask i32) (param $h i32) (result i32)
 *     block
 *       loop
 *         (br_if 1 (i32.ge_u $i $end))
 *         $h = (h << 1) + table[input[$i]]
 *         $i = $i + 1
 *         (if (i32.eqz (i32.and $h $mask)) (then (global.set $hash $h) (return $i)))
 *         br 0
 *       end
 *     end
 *     (global.set $hash $h) (i32.const -1))
 */

/** How much input one load takes: the memory is this plus the table, whatever the input's size. */
export const gearWindowBytes = 1 << 20;
const tableBytes = 1024;

const scanBody = [
  0x00, // no locals beyond the parameters
  0x02, 0x40, 0x03, 0x40, // block, loop
  0x20, 0x00, 0x20, 0x01, 0x4f, 0x0d, 0x01, // i >= end: out of the block
  0x20, 0x03, 0x41, 0x01, 0x74, // h << 1
  0x20, 0x00, 0x2d, 0x00, 0x80, 0x08, // input[i] (i32.load8_u offset=1024)
  0x41, 0x02, 0x74, 0x28, 0x02, 0x00, // table[...] (i32.load of 4 * byte)
  0x6a, 0x21, 0x03, // add, into h
  0x20, 0x00, 0x41, 0x01, 0x6a, 0x21, 0x00, // i += 1
  0x20, 0x03, 0x20, 0x02, 0x71, 0x45, // (h & mask) == 0
  0x04, 0x40, 0x20, 0x03, 0x24, 0x00, 0x20, 0x00, 0x0f, 0x0b, // then: hash = h, return i
  0x0c, 0x00, 0x0b, 0x0b, // again; end loop, end block
  0x20, 0x03, 0x24, 0x00, 0x41, 0x7f, 0x0b, // hash = h, -1
];

function leb128(value: number): number[] {
  const out: number[] = [];
  do {
    let byte = value & 0x7f;
    value >>>= 7;
    if (value !== 0) byte |= 0x80;
    out.push(byte);
  } while (value !== 0);
  return out;
}

const section = (id: number, bytes: number[]) => [id, ...leb128(bytes.length), ...bytes];
const name = (text: string) => [...leb128(text.length), ...Buffer.from(text, 'ascii')];
const pages = Math.ceil((tableBytes + gearWindowBytes) / 65536);

const moduleBytes = Uint8Array.from([
  0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
  ...section(1, [0x01, 0x60, 0x04, 0x7f, 0x7f, 0x7f, 0x7f, 0x01, 0x7f]), // type: (i32 x4) -> i32
  ...section(3, [0x01, 0x00]), // one function of that type
  ...section(5, [0x01, 0x01, ...leb128(pages), ...leb128(pages)]), // memory, fixed size
  ...section(6, [0x01, 0x7f, 0x01, 0x41, 0x00, 0x0b]), // global $hash: mutable i32 = 0
  ...section(7, [0x03, ...name('scan'), 0x00, 0x00, ...name('memory'), 0x02, 0x00, ...name('hash'), 0x03, 0x00]),
  ...section(10, [0x01, ...leb128(scanBody.length), ...scanBody]),
]);

export interface GearScanner {
  /** Copies `data` (at most gearWindowBytes) in: scan reads it by index. */
  load(data: Uint8Array): void;
  /**
   * Rolls `h` over the loaded bytes from index `from` to `to`: the index just after the first byte
   * where `(h & mask) === 0`, or -1 when none is. `hash` is then h after the last byte rolled.
   */
  scan(from: number, to: number, mask: number, h: number): number;
  readonly hash: number;
}

/** A scanner over `table` (256 words), or undefined where WebAssembly memory cannot be had. */
export function makeGearScanner(table: Uint32Array): GearScanner | undefined {
  let instance: WebAssembly.Instance;
  try {
    instance = new WebAssembly.Instance(new WebAssembly.Module(moduleBytes));
  } catch {
    // no WebAssembly, or no room for its memory's reservation (address-space limits)
    return undefined;
  }
  const exports = instance.exports as { scan: (from: number, to: number, mask: number, h: number) => number; memory: WebAssembly.Memory; hash: WebAssembly.Global };
  const memory = exports.memory.buffer;
  const words = new DataView(memory, 0, tableBytes);
  table.forEach((word, i) => words.setUint32(i * 4, word, true));
  const input = new Uint8Array(memory, tableBytes, gearWindowBytes);
  const { scan, hash } = exports;
  return {
    load: (data) => input.set(data),
    scan,
    get hash() {
      return hash.value as number;
    },
  };
}
