/**
 * What a host holding one image must fetch to build another, by chunk hash: the plan a delta
 * install will follow, and what `kubeos bundle diff` prints. Pure.
 */
import type { Chunk } from './chunk-index.js';

export interface ChunkDiff {
  /** Chunks of the new image, and their bytes (its size). */
  chunks: number;
  bytes: number;
  /** Distinct chunks of the new image that the old one does not hold: what is downloaded, each once. */
  missingChunks: number;
  missingBytes: number;
  /** Bytes of the new image found in the old one's chunks (or repeated within the new one). */
  reusedBytes: number;
}

/** The same decision one chunk at a time, for a caller that streams the new image (and compresses what is missing as it passes). */
export class ChunkDiffer {
  private readonly have = new Set<string>();
  private chunks = 0;
  private bytes = 0;
  private missingChunks = 0;
  private missingBytes = 0;

  constructor(held: Iterable<Chunk>) {
    for (const chunk of held) this.have.add(chunk.sha256);
  }

  /** True when this chunk of the new image must be fetched. */
  add(chunk: Chunk): boolean {
    this.chunks++;
    this.bytes += chunk.length;
    if (this.have.has(chunk.sha256)) return false;
    // once fetched, a repeated chunk (zero blocks, duplicate files) is held too
    this.have.add(chunk.sha256);
    this.missingChunks++;
    this.missingBytes += chunk.length;
    return true;
  }

  result(): ChunkDiff {
    const { chunks, bytes, missingChunks, missingBytes } = this;
    return { chunks, bytes, missingChunks, missingBytes, reusedBytes: bytes - missingBytes };
  }
}

export function diffChunkIndexes(held: Iterable<Chunk>, wanted: Iterable<Chunk>): ChunkDiff {
  const differ = new ChunkDiffer(held);
  for (const chunk of wanted) differ.add(chunk);
  return differ.result();
}
