/**
 * Which entries of a layer a later layer removes anyway: a `.wh.NAME` whiteout removes NAME and
 * what is under it, a `.wh..wh..opq` marker what lower layers put under its directory. Writing
 * such an entry only to remove it later is most of what an image that replaces a directory
 * costs to unpack (in the bench, 125 MB of 500 written, moved aside, and never seen again), so
 * when every layer is an uncompressed tar in a file, their headers are read first (the data of
 * each entry skipped, not read) and applyLayer leaves covered entries out.
 *
 * Left out, an entry must not change what the layers between it and the one removing it do:
 * - it lands at the path it names (applyLayer checks no symlink is on the way or in its place
 *   when it gets there), so every later use of that lexical path meets it or its removal;
 * - symlinks and whiteouts are always applied (a symlink redirects later writes out of the
 *   removed path, and those writes stay);
 * - nothing that a hard link in any layer could point to is left out (a link names its target
 *   by a path whose last segment is the target's own, so a name shared with any link target
 *   keeps the entry).
 * One difference remains, in archives that were refused before: a layer between that writes
 * under a path where a covered entry put a file now meets no file there and goes on; the tree
 * it ends with is what it would have been, since the later layer removes that path with all
 * under it.
 */
import { open } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import type { FileKind } from './file-meta.js';
import { decodeEntryNames, entryMark } from './apply-layer.js';
import { detectCompression } from './open-layer.js';
import { FileRangeReader } from './read-file-range.js';

/** A layer's bytes: [start, start + size) of a file. */
export interface LayerBytes {
  file: string;
  start: number;
  size: number;
}

/** Whether a later layer removes the entry at `segments` (of kind `kind`) of the layer it was made for. */
export type IsCovered = (segments: readonly string[], kind: FileKind | 'link') => boolean;

/**
 * What applyLayer gets for one layer: the test, and the whiteouts, opaque markers and link
 * targets the scan saw in it, in order (apply-layer.ts's entryMark), which the layer's hashed
 * bytes must show again: the scan read bytes that were not yet checked against the digest.
 */
export interface CoveredEntries {
  isCovered: IsCovered;
  marks: string[];
}

interface Removals {
  /** Paths whited out, with the last layer that does it. */
  whiteouts: Map<string, number>;
  /** Directories made opaque, with the last layer that does it. */
  opaque: Map<string, number>;
  /** Last segments of every hard link's target. */
  linkNames: Set<string>;
}

/** Header reads of a layer: small, since only the headers are wanted. */
const headerReadBytes = 64 * 1024;

/** The marks of a layer's entries, in order; undefined for a compressed layer. */
async function scanLayer(layer: LayerBytes, where: string, signal?: AbortSignal): Promise<string[] | undefined> {
  const handle = await open(layer.file, 'r');
  try {
    const head = Buffer.alloc(8);
    await handle.read(head, 0, head.length, layer.start);
    if (detectCompression(head) !== 'none') return undefined;
    const reader = new FileRangeReader(handle, layer.start, layer.start + layer.size, headerReadBytes);
    const extract = tar.extract({ filenameEncoding: 'latin1' } as Parameters<typeof tar.extract>[0]);
    const marks: string[] = [];
    // events, not async iterators: a promise or two per entry was most of a scan's time
    extract.on('entry', (header, stream, next) => {
      try {
        const segments = decodeEntryNames(header as Parameters<typeof decodeEntryNames>[0], where);
        if (header.type === 'file' || header.type === 'contiguous-file') {
          const start = reader.start + (stream as unknown as { offset: number }).offset + 512;
          reader.skip(start, start + (header.size ?? 0));
        }
        const mark = entryMark(segments, header.type, header.linkname);
        if (mark !== undefined) marks.push(mark);
      } catch (error) {
        extract.destroy(error as Error);
        return;
      }
      stream.on('end', next);
      stream.resume();
    });
    await pipeline(reader, extract, { signal });
    return marks;
  } finally {
    await handle.close();
  }
}

/**
 * For each layer, what later layers remove of it; undefined when a layer cannot be scanned
 * cheaply (compressed) or not at all (the layer's own application then reports why).
 */
export async function findCoveredEntries(layers: LayerBytes[], where: string, signal?: AbortSignal): Promise<CoveredEntries[] | undefined> {
  const marks: string[][] = [];
  try {
    for (const layer of layers) {
      const found = await scanLayer(layer, where, signal);
      if (found === undefined) return undefined;
      marks.push(found);
    }
  } catch {
    return undefined;
  }
  const removals: Removals = { whiteouts: new Map(), opaque: new Map(), linkNames: new Set() };
  for (const [i, layerMarks] of marks.entries()) {
    for (const mark of layerMarks) {
      const [what, path] = [mark.slice(0, mark.indexOf(' ')), mark.slice(mark.indexOf(' ') + 1)];
      if (what === 'link') removals.linkNames.add(path);
      else (what === 'opaque' ? removals.opaque : removals.whiteouts).set(path, i);
    }
  }
  if (removals.whiteouts.size === 0 && removals.opaque.size === 0) return undefined;
  return marks.map((layerMarks, layer) => ({
    marks: layerMarks,
    isCovered: (segments, kind) => {
      if (kind !== 'dir' && removals.linkNames.has(segments.at(-1) ?? '')) return false;
      for (let n = 0; n <= segments.length; n++) {
        const prefix = segments.slice(0, n).join('/');
        if (n > 0 && (removals.whiteouts.get(prefix) ?? -1) > layer) return true;
        if (n < segments.length && (removals.opaque.get(prefix) ?? -1) > layer) return true;
      }
      return false;
    },
  }));
}
