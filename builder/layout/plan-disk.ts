/** Layout → disk plan: where each partition starts and ends, and every id. Pure. */
import { KubeosError } from '../../runtime/core/errors.js';
import { deriveUuid } from './derive-uuid.js';
import { sectorSize, type Filesystem, type Layout, type Role } from './layout.js';
import { readOnlyAttributeBit } from './partition-types.js';
import { formatSize } from './size.js';

export interface PlannedPartition {
  /** 1-based GPT partition number (GRUB's gptN, Linux's vdaN). */
  number: number;
  name: string;
  role: Role;
  typeGuid: string;
  uuid: string;
  /** UUID of the filesystem written into it. */
  fsUuid: string;
  filesystem: Filesystem;
  firstLba: number;
  lastLba: number;
  offset: number;
  size: number;
  attributeBits: number[];
}

export interface DiskPlan {
  layout: string;
  size: number;
  diskGuid: string;
  sectorSize: number;
  bootTries: number;
  partitions: PlannedPartition[];
}

/** GPT backup header plus 128 entries of 128 bytes, at the end of the disk. */
const gptTailSectors = 33;

function alignUp(value: number, alignment: number): number {
  return Math.ceil(value / alignment) * alignment;
}

export function planDisk(layout: Layout): DiskPlan {
  let offset = alignUp(34 * sectorSize, layout.alignment);
  const partitions = layout.partitions.map((spec, index): PlannedPartition => {
    const start = alignUp(offset, layout.alignment);
    offset = start + spec.size;
    return {
      number: index + 1,
      name: spec.name,
      role: spec.role,
      typeGuid: spec.type,
      uuid: deriveUuid(layout.seed, `partition:${spec.name}`),
      fsUuid: deriveUuid(layout.seed, `filesystem:${spec.name}`),
      filesystem: spec.filesystem,
      firstLba: start / sectorSize,
      lastLba: (start + spec.size) / sectorSize - 1,
      offset: start,
      size: spec.size,
      attributeBits: spec.role === 'root-a' || spec.role === 'root-b' ? [readOnlyAttributeBit] : [],
    };
  });
  const needed = alignUp(offset + gptTailSectors * sectorSize, layout.alignment);
  if (layout.diskSize !== undefined && layout.diskSize < needed) {
    throw new KubeosError('E_LAYOUT_DOES_NOT_FIT', `layout ${layout.file}: the partitions need ${formatSize(needed)} but diskSize is ${formatSize(layout.diskSize)}`, {
      hint: `raise diskSize to at least "${formatSize(needed)}" or shrink a partition`,
      details: { file: layout.file, needed, diskSize: layout.diskSize },
    });
  }
  return {
    layout: layout.name,
    size: layout.diskSize ?? needed,
    diskGuid: deriveUuid(layout.seed, 'disk'),
    sectorSize,
    bootTries: layout.bootTries,
    partitions,
  };
}

export function partitionByRole(plan: DiskPlan, role: Role): PlannedPartition {
  const found = plan.partitions.find((p) => p.role === role);
  if (!found) throw new KubeosError('E_LAYOUT_INVALID', `layout ${plan.layout} has no ${role} partition`);
  return found;
}
