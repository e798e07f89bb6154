/**
 * A chunk pack: the zstd frames of the chunks a release added to the store, concatenated in image
 * order (`packs/<image sha256>.pack` in the store), with a map of where each one sits
 * (`packs/<image sha256>.map`). The same frames are stored one by one as `<sha256>.zst`; the pack
 * lets a host fetch a run of missing chunks with one Range request instead of one GET each.
 *
 * The map is not signed and need not be: it only says where to look. Every chunk read from a pack
 * is decoded and checked against the signed index exactly like a chunk file, and a pack that
 * disagrees costs a fetch of the chunk file instead. Pure: bytes in, entries out.
 *
 * Map format: the 8 bytes `KBPACK01`, a uint32 BE count, then per entry two uint32 BE: the
 * chunk's position in the signed index (its first occurrence) and its frame's size in bytes.
 * Entries are in pack order, positions strictly ascending; offsets follow from the sizes.
 */
import { KubeosError } from '../errors.js';

const magic = Buffer.from('KBPACK01', 'latin1');
const headerBytes = magic.length + 4;
const entryBytes = 8;

export interface PackEntry {
  /** Position of the chunk in the signed index (its first occurrence). */
  position: number;
  /** Offset of its zstd frame in the pack. */
  offset: number;
  size: number;
}

/** Store-relative paths of the pack of an image, named by the image's signed sha256. */
export function packPaths(imageSha256: string): { pack: string; map: string } {
  return { pack: `packs/${imageSha256}.pack`, map: `packs/${imageSha256}.map` };
}

export function encodePackMap(entries: readonly { position: number; size: number }[]): Buffer {
  const out = Buffer.alloc(headerBytes + entries.length * entryBytes);
  magic.copy(out, 0);
  out.writeUInt32BE(entries.length, magic.length);
  entries.forEach((entry, i) => {
    out.writeUInt32BE(entry.position, headerBytes + i * entryBytes);
    out.writeUInt32BE(entry.size, headerBytes + i * entryBytes + 4);
  });
  return out;
}

/**
 * The entries of a map fetched from a store, refused (E_DELTA, naming the problem) unless every
 * entry names a position of an index of `chunks` chunks, in ascending order.
 */
export function decodePackMap(bytes: Buffer, chunks: number, url: string): PackEntry[] {
  const fail = (problem: string) =>
    new KubeosError('E_DELTA', `chunk pack map ${url} ${problem}`, {
      hint: 'the pack map is damaged or not kubeos\'s: publish the bundle again; meanwhile the chunks are fetched one by one',
      details: { url },
    });
  if (bytes.length < headerBytes || !bytes.subarray(0, magic.length).equals(magic)) throw fail('does not start with KBPACK01');
  const count = bytes.readUInt32BE(magic.length);
  if (bytes.length !== headerBytes + count * entryBytes) throw fail(`is ${bytes.length} bytes; ${count} entries take ${headerBytes + count * entryBytes}`);
  const entries: PackEntry[] = [];
  let offset = 0;
  let last = -1;
  for (let i = 0; i < count; i++) {
    const position = bytes.readUInt32BE(headerBytes + i * entryBytes);
    const size = bytes.readUInt32BE(headerBytes + i * entryBytes + 4);
    if (position <= last || position >= chunks) throw fail(`entry ${i} names position ${position}: positions must ascend and stay under the index's ${chunks} chunks`);
    if (size === 0) throw fail(`entry ${i} has an empty frame`);
    entries.push({ position, offset, size });
    offset += size;
    last = position;
  }
  return entries;
}
