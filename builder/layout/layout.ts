/** The validated form of a layout file (layouts/*.json). */
export const roles = ['esp', 'root-a', 'root-b', 'persist'] as const;
export type Role = (typeof roles)[number];

/** Filesystems the builder can write into a partition, by role. */
export const filesystemsByRole = {
  'esp': ['vfat'],
  'root-a': ['ext4', 'squashfs'],
  'root-b': ['ext4', 'squashfs'],
  'persist': ['ext4'],
} as const satisfies Record<Role, readonly string[]>;

export type Filesystem = (typeof filesystemsByRole)[Role][number];

export interface PartitionSpec {
  name: string;
  role: Role;
  /** GPT type GUID, upper case. */
  type: string;
  size: number;
  filesystem: Filesystem;
}

export interface Layout {
  name: string;
  /** The file it came from, for error messages and build.json. */
  file: string;
  /** Seed of every derived UUID (disk, partitions, filesystems). */
  seed: string;
  alignment: number;
  /** How many times GRUB tries a new slot before it falls back to the good one. */
  bootTries: number;
  diskSize: number | undefined;
  partitions: PartitionSpec[];
}

export const sectorSize = 512;
