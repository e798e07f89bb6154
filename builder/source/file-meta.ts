/**
 * What a root filesystem source says about each path that a staging tree written as the current
 * user cannot hold: owners, exact modes (setuid included), device numbers, xattrs. The staging
 * tree holds names, contents, links and mtimes; this list is applied to the filesystem image
 * afterwards (debugfs for ext4, pseudo definitions for squashfs), so no step needs root.
 */
export const fileKinds = ['file', 'dir', 'symlink', 'char', 'block', 'fifo'] as const;
export type FileKind = (typeof fileKinds)[number];

export interface FileMeta {
  kind: FileKind;
  /** Permission bits with setuid, setgid and sticky (0o7777). */
  mode: number;
  uid: number;
  gid: number;
  /** Seconds since the epoch; undefined: the build's SOURCE_DATE_EPOCH. */
  mtime: number | undefined;
  /** Major and minor device numbers of char and block devices. */
  rdev?: [number, number];
  xattrs?: Record<string, Buffer>;
}

/** Linux's dev_t holds a 12-bit major and a 20-bit minor. */
export const maxDeviceMajor = 4095;
export const maxDeviceMinor = 1048575;

/** Why a device number cannot exist on Linux, or undefined when it can. */
export function deviceNumberProblem(rdev: [number, number]): string | undefined {
  const [major, minor] = rdev;
  if (!Number.isInteger(major) || major < 0 || major > maxDeviceMajor) return `major ${major} is outside Linux's 0-${maxDeviceMajor}`;
  if (!Number.isInteger(minor) || minor < 0 || minor > maxDeviceMinor) return `minor ${minor} is outside Linux's 0-${maxDeviceMinor}`;
  return undefined;
}

/** Physical path relative to the tree root ('' is the root) → its metadata. */
export type MetaList = Map<string, FileMeta>;

/** The mode a staging tree holds for an entry: writable and searchable by its owner, never setuid. */
export function stagedMode(meta: FileMeta): number {
  if (meta.kind === 'dir') return (meta.mode & 0o777) | 0o700;
  if (meta.kind === 'file') return (meta.mode & 0o777) | 0o600;
  if (meta.kind === 'symlink') return 0o777;
  return 0o600;
}

/** Type bits of st_mode / i_mode. */
export const typeBits: Record<FileKind, number> = {
  file: 0o100000, dir: 0o040000, symlink: 0o120000, char: 0o020000, block: 0o060000, fifo: 0o010000,
};

/** Paths in a stable order: parents before children, siblings by name. */
export function sortedPaths(meta: MetaList): string[] {
  return [...meta.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}
