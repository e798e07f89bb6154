/** The GPT, written by sgdisk on the image file, and the partition images spliced into place. */
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

/**
 * Copies `source` into `disk` at `offset`, skipping all-zero blocks so the image stays sparse.
 * It hashes nothing: rootfs.img's sha256 comes from the one read that also cuts its chunk index
 * (stage-factory-state.ts).
 */
export async function splicePartition(disk: string, offset: number, source: string, onProgress?: (done: number, total: number) => void): Promise<void> {
  const src = await open(source, 'r');
  const dst = await open(disk, 'r+');
  try {
    const { size } = await src.stat();
    const buffer = Buffer.alloc(blockSize);
    const zeros = Buffer.alloc(blockSize);
    for (let pos = 0; pos < size; pos += blockSize) {
      const { bytesRead } = await src.read(buffer, 0, blockSize, pos);
      const chunk = buffer.subarray(0, bytesRead);
      // Buffer#equals is a memcmp; a per-byte callback here cost seconds per build
      if (!chunk.equals(zeros.subarray(0, bytesRead))) await dst.write(chunk, 0, bytesRead, offset + pos);
      onProgress?.(pos + bytesRead, size);
    }
  } finally {
    await src.close();
    await dst.close();
  }
}
