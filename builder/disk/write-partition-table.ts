/** The GPT, written by sgdisk on the image file, and the partition images spliced into place. */
import { readSync, writeSync } from 'node:fs';
import { open, rm, truncate, writeFile } from 'node:fs/promises';
import { run } from '../../runtime/core/exec.js';
import type { DiskPlan } from '../layout/plan-disk.js';

export function sgdiskArgs(plan: DiskPlan, file: string): string[] {
  const args = ['--clear', `--disk-guid=${plan.diskGuid}`];
  for (const p of plan.partitions) {
    args.push(`--new=${p.number}:${p.firstLba}:${p.lastLba}`, `--typecode=${p.number}:${p.typeGuid}`, `--partition-guid=${p.number}:${p.uuid}`, `--change-name=${p.number}:${p.name}`);
    for (const bit of p.attributeBits) args.push(`--attributes=${p.number}:set:${bit}`);
  }
  args.push(file);
  return args;
}

export async function writePartitionTable(plan: DiskPlan, file: string, signal?: AbortSignal): Promise<void> {
  await rm(file, { force: true });
  await writeFile(file, '');
  await truncate(file, plan.size);
  await run('sgdisk', sgdiskArgs(plan, file), { signal, timeoutMs: 60_000 });
}

const blockSize = 1024 * 1024;
/** Blocks copied between two looks at the event loop (progress, an abort). */
const blocksPerTurn = 64;

/**
 * Copies `source` into `disk` at `offset`, skipping all-zero blocks so the image stays sparse.
 * It hashes nothing: rootfs.img's sha256 comes from the one read that also cuts its chunk index
 * (stage-factory-state.ts). The reads and writes are synchronous, a turn of the event loop every
 * 64 MiB: nothing else runs meanwhile, and a promise-based read and write per block waited on
 * the thread pool for longer than they took (a third of a second a build).
 */
export async function splicePartition(disk: string, offset: number, source: string, onProgress?: (done: number, total: number) => void, signal?: AbortSignal): Promise<void> {
  const src = await open(source, 'r');
  const dst = await open(disk, 'r+');
  try {
    const { size } = await src.stat();
    const buffer = Buffer.alloc(blockSize);
    const zeros = Buffer.alloc(blockSize);
    for (let pos = 0, block = 0; pos < size; pos += blockSize, block++) {
      if (block % blocksPerTurn === blocksPerTurn - 1) {
        await new Promise((resolve) => setImmediate(resolve));
        signal?.throwIfAborted();
      }
      const bytesRead = readSync(src.fd, buffer, 0, blockSize, pos);
      const chunk = buffer.subarray(0, bytesRead);
      // Buffer#equals is a memcmp; a per-byte callback here cost seconds per build
      if (!chunk.equals(zeros.subarray(0, bytesRead))) {
        for (let at = 0; at < bytesRead;) at += writeSync(dst.fd, chunk, at, bytesRead - at, offset + pos + at);
      }
      onProgress?.(pos + bytesRead, size);
    }
  } finally {
    await src.close();
    await dst.close();
  }
}
