/**
 * The "newc" cpio format the kernel unpacks as an initramfs, as a pure encoder. Written here rather
 * than with cpio(1) so device nodes (/dev/console) need no mknod, i.e. no root, and every field
 * (inode numbers, owners, times) is fixed for reproducible builds.
 */
export type CpioEntry =
  | { kind: 'dir'; path: string; mode: number }
  | { kind: 'file'; path: string; mode: number; data: Buffer }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'char'; path: string; mode: number; major: number; minor: number };

const typeBits = { dir: 0o040000, file: 0o100000, symlink: 0o120000, char: 0o020000 } as const;

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function header(fields: number[], name: string): Buffer {
  const hex = fields.map((f) => f.toString(16).padStart(8, '0')).join('');
  const text = Buffer.from(`070701${hex}${name}\0`, 'latin1');
  return Buffer.concat([text, pad4(text.length)]);
}

export function encodeCpio(entries: readonly CpioEntry[], mtime: number): Buffer {
  const parts: Buffer[] = [];
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  sorted.forEach((entry, index) => {
    const data = entry.kind === 'file' ? entry.data : entry.kind === 'symlink' ? Buffer.from(entry.target) : Buffer.alloc(0);
    const perm = entry.kind === 'symlink' ? 0o777 : entry.mode;
    const [rmaj, rmin] = entry.kind === 'char' ? [entry.major, entry.minor] : [0, 0];
    const name = entry.path.replace(/^\/+/, '');
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize, check
    parts.push(header([index + 1, typeBits[entry.kind] | perm, 0, 0, entry.kind === 'dir' ? 2 : 1, mtime, data.length, 0, 0, rmaj, rmin, Buffer.byteLength(name) + 1, 0], name));
    parts.push(data, pad4(data.length));
  });
  parts.push(header([0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0], 'TRAILER!!!'));
  return Buffer.concat(parts);
}
