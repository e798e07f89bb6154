/**
 * The chunk store objects of one bundle, from its image as it streams: each chunk of its index
 * (write-chunk-files.ts) and, when the manifest names an index object, that object, written last
 * so a store that holds it holds its chunks too.
 *
 * A manifest with the inline index (bundles made before the index object) gives the cuts. One with
 * an index object does not, and a bundle file cannot carry the object (older readers refuse any
 * member but the three), so the index is cut again from the image by the signed rule: it is a
 * function of the image and the rule. That happens in the same pass that writes the chunks (the
 * image is fed on to the chunk writer only as far as the chunker has cut it), and the index so
 * made is trusted only once it encodes to the size and sha256 the manifest signs: else
 * E_BUNDLE_INVALID, and no index object is written. The chunks written by then are named by their
 * own bytes' sha256, so they are valid store objects whatever the index says.
 */
import { Chunker } from '../../runtime/core/bundle/chunk-index.js';
import { encodeChunkIndex, openIndexObject } from '../../runtime/core/bundle/chunk-index-object.js';
import type { BundleManifest, ChunkIndexInfo, IndexedChunk } from '../../runtime/core/bundle/manifest.js';
import { KubeosError } from '../../runtime/core/errors.js';
import { writeChunkFiles, type WriteChunkOptions, type WrittenChunks } from './write-chunk-files.js';
import { writeIndexObject, type WrittenIndexObject } from './write-index-object.js';

export interface WrittenBundleChunks extends WrittenChunks {
  /** The index the chunks were cut by (the signed one). */
  index: ChunkIndexInfo;
  /** The index object, for a manifest that names one. */
  indexObject?: WrittenIndexObject;
}

export interface WriteBundleChunkOptions extends WriteChunkOptions {
  /** The index, when the caller cut it itself (bundle create): the image is then not cut again, but the index is still checked against the manifest. */
  index?: ChunkIndexInfo | undefined;
}

export async function writeBundleChunks(image: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, manifest: BundleManifest, dir: string, options: WriteBundleChunkOptions = {}): Promise<WrittenBundleChunks> {
  const { index: inline, indexObject: signed, uncompressedSize } = manifest.payload;
  if (signed === undefined) {
    if (inline === undefined) throw new KubeosError('E_USAGE', `the bundle ${manifest.os} ${manifest.version} has no chunk index (format 1): it has no chunk store`, { hint: 'create the bundle without --no-index' });
    return { ...(await writeChunkFiles(image, inline, dir, options)), index: inline };
  }
  let index = options.index;
  let written: WrittenChunks;
  if (index === undefined) {
    const chunks: IndexedChunk[] = [];
    written = await writeChunkFiles(cutByRule(image, new Chunker(signed.rule), chunks), { rule: signed.rule, chunks }, dir, options);
    index = { rule: { ...signed.rule }, chunks };
  } else {
    written = await writeChunkFiles(image, index, dir, options);
  }
  const bytes = encodeChunkIndex(index.chunks);
  // the index cut here must be the one signed: the hosts fetch the object by that sha256
  const checked = openIndexObject(bytes, signed, uncompressedSize);
  const indexObject = await writeIndexObject(dir, bytes, signed.sha256, options);
  return { ...written, index: checked, indexObject };
}

/**
 * The image passed on only as far as `chunker` has cut it, each cut appended to `chunks` before
 * the bytes it covers: a reader cutting by `chunks` as it goes (writeChunkFiles) always knows the
 * chunk its bytes belong to. At most one chunk and one piece are held back.
 */
async function* cutByRule(image: AsyncIterable<Uint8Array> | Iterable<Uint8Array>, chunker: Chunker, chunks: IndexedChunk[]): AsyncGenerator<Buffer> {
  const held: Buffer[] = [];
  /** Image offset of held[0]'s first byte. */
  let heldAt = 0;
  function* release(upTo: number): Generator<Buffer> {
    while (held.length > 0 && heldAt < upTo) {
      const first = held[0]!;
      const take = Math.min(first.length, upTo - heldAt);
      yield take === first.length ? first : first.subarray(0, take);
      heldAt += take;
      if (take === first.length) held.shift();
      else held[0] = first.subarray(take);
    }
  }
  for await (const piece of image) {
    const data = Buffer.isBuffer(piece) ? piece : Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength);
    held.push(data);
    const cut = chunker.push(data);
    for (const c of cut) chunks.push([c.length, c.sha256]);
    const last = cut.at(-1);
    if (last !== undefined) yield* release(last.offset + last.length);
  }
  for (const c of chunker.finish()) chunks.push([c.length, c.sha256]);
  yield* release(Number.POSITIVE_INFINITY);
}
