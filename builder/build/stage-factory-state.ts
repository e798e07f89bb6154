/**
 * What the agent of a new disk knows about slot A before its first update: the factory image's
 * record in state.json and its chunk index (`slot-A.index.json`), staged for the persist
 * filesystem at the agent's default state dir. Without them a host's first delta reads and
 * indexes all of slot A before it fetches anything (about 1.3 s for images/debian, which made
 * that first delta slower than the full bundle: docs/deltas.md). The agent trusts neither for a
 * byte of an image: it uses the index only for an image with that sha256 in state.json, and
 * hashes every chunk it copies from the slot again.
 *
 * Written with the agent's own writers, so the files are exactly what an install would leave.
 * One read of rootfs.img gives its size, sha256 and index.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import { writeState } from '../../runtime/agent/agent-state.js';
import { saveSlotIndex } from '../../runtime/agent/slot-index-store.js';
import { Chunker, defaultCdcRule } from '../../runtime/core/bundle/chunk-index.js';
import type { FileMeta, MetaList } from '../source/file-meta.js';

/** The agent's default state dir (agent-config.ts), under the persist mount point. */
export const factoryStateDir = '.kubeos/agent';

export interface FactoryState {
  sha256: string;
  size: number;
  chunks: number;
}

export async function stageFactoryState(tree: string, rootfsImg: string, version: string, epoch: number, signal?: AbortSignal): Promise<{ state: FactoryState; meta: MetaList }> {
  const chunker = new Chunker(defaultCdcRule);
  const whole = createHash('sha256');
  const index: [number, string][] = [];
  let size = 0;
  const file = await open(rootfsImg, 'r');
  try {
    const buffer = Buffer.allocUnsafe(1 << 20);
    for (;;) {
      signal?.throwIfAborted();
      const { bytesRead } = await file.read(buffer, 0, buffer.length, size);
      if (bytesRead === 0) break;
      const piece = buffer.subarray(0, bytesRead);
      whole.update(piece);
      for (const c of chunker.push(piece)) index.push([c.length, c.sha256]);
      size += bytesRead;
    }
    for (const c of chunker.finish()) index.push([c.length, c.sha256]);
  } finally {
    await file.close();
  }
  const sha256 = whole.digest('hex');
  const stateDir = join(tree, factoryStateDir);
  await writeState(stateDir, { slots: { A: { version, sha256, size, committed: true } }, channelSerials: {} });
  await saveSlotIndex(stateDir, 'A', sha256, { rule: { ...defaultCdcRule }, chunks: index });
  // owned by root like the rest of persist, whoever built the image; only root reads the agent's state
  const owned = (kind: FileMeta['kind'], mode: number): FileMeta => ({ kind, mode, uid: 0, gid: 0, mtime: epoch });
  const meta: MetaList = new Map([
    ['.kubeos', owned('dir', 0o755)],
    ['.kubeos/agent', owned('dir', 0o700)],
    ['.kubeos/agent/state.json', owned('file', 0o644)],
    ['.kubeos/agent/slot-A.index.json', owned('file', 0o644)],
  ]);
  return { state: { sha256, size, chunks: index.length }, meta };
}
