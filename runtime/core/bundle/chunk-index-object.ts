/**
 * The chunk index as a binary object: what a format 2 bundle's manifest names (`payload.indexObject`)
 * instead of carrying the index inline as hex JSON (~75 bytes a chunk). The object is stored in the
 * chunk store like any chunk, `chunks/<sha256 of these bytes>.zst`, and a host fetches it once.
 *
 * Layout, all integers big-endian:
 *   bytes 0-3  magic "KBIX"
 *   bytes 4-7  version, 1
 *   then per chunk, in image order: uint32 length, 32 bytes of raw sha256 (36 bytes a chunk)
 * Offsets follow from the lengths, as in the inline index. The rule and the count are not in the
 * object: the signed manifest gives them, with the object's size and sha256.
 *
 * Pure: bytes in, chunks out. Decoding takes untrusted bytes and reports every problem it finds
 * (the first few bad chunks of a broken index, not a million of them).
 */
import { createHash } from 'node:crypto';
import { KubeosError } from '../errors.js';
import type { ChunkIndexInfo, IndexedChunk, IndexObjectInfo } from './manifest.js';

export const indexObjectMagic = 'KBIX';
export const indexObjectVersion = 1;
export const indexObjectHeaderBytes = 8;
export const indexObjectEntryBytes = 36;

const hex64 = /^[0-9a-f]{64}$/;
const maxListed = 5;

/** One thing wrong with an index object: `check` is stable (tests and callers match it), `message` is for people. */
export interface IndexObjectProblem {
  check: 'header' | 'magic' | 'version' | 'truncated' | 'count' | 'length' | 'total';
  /** The chunk, for a bad length. */
  chunk?: number;
  message: string;
}

/** Bytes of the encoded index of `count` chunks. */
export function indexObjectBytes(count: number): number {
  return indexObjectHeaderBytes + count * indexObjectEntryBytes;
}

/** The object's bytes for an index the caller made (bundle create): a chunk no index could hold is a bug, refused. */
export function encodeChunkIndex(chunks: readonly IndexedChunk[]): Buffer {
  const out = Buffer.alloc(indexObjectBytes(chunks.length));
  out.write(indexObjectMagic, 0, 'latin1');
  out.writeUInt32BE(indexObjectVersion, 4);
  chunks.forEach(([length, sha256], i) => {
    if (!Number.isSafeInteger(length) || length < 1 || length > 0xffffffff || !hex64.test(sha256)) {
      throw new KubeosError('E_BUNDLE_INVALID', `chunk ${i} of the index cannot be encoded: [${length}, ${JSON.stringify(sha256)}] is not [length 1..4294967295, sha256 hex]`, { details: { chunk: i } });
    }
    const at = indexObjectHeaderBytes + i * indexObjectEntryBytes;
    out.writeUInt32BE(length, at);
    out.write(sha256, at + 4, 'hex');
  });
  return out;
}

export interface IndexObjectExpectation {
  /** The rule's max: no chunk is longer. */
  max: number;
  /** Bytes of the image: the lengths add up to it. */
  imageSize: number;
  /** Chunks the signed manifest says the index holds. */
  chunkCount?: number;
}

/** The chunks of an encoded index, checked against what the manifest says of the image. Throws E_BUNDLE_INVALID naming every problem found. */
export function decodeChunkIndex(bytes: Uint8Array, expected: IndexObjectExpectation): IndexedChunk[] {
  const data = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const problems: IndexObjectProblem[] = [];
  const add = (check: IndexObjectProblem['check'], message: string, chunk?: number) => problems.push({ check, message, ...(chunk === undefined ? {} : { chunk }) });
  if (data.length < indexObjectHeaderBytes) {
    add('header', `it is ${data.length} bytes, shorter than the ${indexObjectHeaderBytes}-byte header`);
  } else {
    const magic = data.subarray(0, 4);
    const version = data.readUInt32BE(4);
    if (magic.toString('latin1') !== indexObjectMagic) add('magic', `bad magic ${magic.toString('hex')}, expected ${Buffer.from(indexObjectMagic, 'latin1').toString('hex')} ("${indexObjectMagic}")`);
    else if (version !== indexObjectVersion) add('version', `version ${version}, this host reads version ${indexObjectVersion}`);
  }
  if (problems.length > 0) throw invalid(problems);

  const body = data.length - indexObjectHeaderBytes;
  const count = Math.floor(body / indexObjectEntryBytes);
  if (body % indexObjectEntryBytes !== 0) add('truncated', `truncated: ${body} bytes after the header are not whole ${indexObjectEntryBytes}-byte entries (${count} entries and ${body % indexObjectEntryBytes} bytes)`);
  if (expected.chunkCount !== undefined && count !== expected.chunkCount) add('count', `holds ${count} chunks, the manifest says ${expected.chunkCount}`);
  const chunks: IndexedChunk[] = new Array(count);
  let total = 0;
  let bad = 0;
  for (let i = 0; i < count; i++) {
    const at = indexObjectHeaderBytes + i * indexObjectEntryBytes;
    const length = data.readUInt32BE(at);
    if (length === 0 || length > expected.max) {
      if (bad++ < maxListed) add('length', `chunk ${i} (byte ${at}) is ${length} bytes long, must be 1..${expected.max}`, i);
    }
    total += length;
    chunks[i] = [length, data.toString('hex', at + 4, at + indexObjectEntryBytes)];
  }
  if (bad > maxListed) add('length', `and ${bad - maxListed} more chunks of a bad length`);
  if (bad === 0 && total !== expected.imageSize) add('total', `the chunk lengths add up to ${total} bytes, the image is ${expected.imageSize}`);
  if (problems.length > 0) throw invalid(problems);
  return chunks;
}

function invalid(problems: IndexObjectProblem[]): KubeosError {
  return new KubeosError('E_BUNDLE_INVALID', `the chunk index object is invalid: ${problems.map((p) => p.message).join('; ')}`, {
    hint: 'the bundle was signed with a broken index: create and publish it again',
    details: { problems },
  });
}

/** What the manifest says of an index, and the object's bytes (bundle create). */
export function describeIndexObject(index: ChunkIndexInfo): { info: IndexObjectInfo; bytes: Buffer } {
  const bytes = encodeChunkIndex(index.chunks);
  return { info: { rule: { ...index.rule }, chunkCount: index.chunks.length, size: bytes.length, sha256: createHash('sha256').update(bytes).digest('hex') }, bytes };
}

/**
 * The index in an object's bytes, trusted only once they are the ones the signed manifest names
 * (size and sha256), then decoded and checked against the image. Throws E_BUNDLE_INVALID.
 */
export function openIndexObject(bytes: Uint8Array, info: IndexObjectInfo, imageSize: number): ChunkIndexInfo {
  const sha256 = createHash('sha256').update(bytes).digest('hex');
  if (bytes.length !== info.size || sha256 !== info.sha256) {
    throw new KubeosError('E_BUNDLE_INVALID', `the chunk index is ${bytes.length} bytes with sha256 ${sha256}; the signed manifest says ${info.size} bytes, sha256 ${info.sha256}`, {
      hint: 'the index cut from this payload is not the one that was signed: the bundle or its chunk store is not what its signer made',
      details: { expected: { size: info.size, sha256: info.sha256 }, actual: { size: bytes.length, sha256 } },
    });
  }
  return { rule: { ...info.rule }, chunks: decodeChunkIndex(bytes, { max: info.rule.max, imageSize, chunkCount: info.chunkCount }) };
}
