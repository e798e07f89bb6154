/** Builds the initramfs: static busybox, the generated /init, the storage modules, /dev/console. */
import { readFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { gzipSync } from 'node:zlib';
import { encodeCpio, type CpioEntry } from './encode-cpio.js';
import { renderInit, type InitInput } from './render-init.js';

export interface InitramfsInput {
  busybox: string;
  modules: { name: string; path: string }[];
  partitionNames: InitInput['partitionNames'];
  mtime: number;
}

export async function makeInitramfs(input: InitramfsInput): Promise<Buffer> {
  const entries: CpioEntry[] = [
    ...['bin', 'dev', 'lib', 'lib/modules', 'newroot', 'proc', 'run', 'sbin', 'sys'].map((path) => ({ kind: 'dir' as const, path, mode: 0o755 })),
    { kind: 'char', path: 'dev/console', mode: 0o600, major: 5, minor: 1 },
    { kind: 'char', path: 'dev/null', mode: 0o666, major: 1, minor: 3 },
    { kind: 'file', path: 'bin/busybox', mode: 0o755, data: await readFile(input.busybox) },
    { kind: 'symlink', path: 'bin/sh', target: 'busybox' },
    { kind: 'file', path: 'init', mode: 0o755, data: Buffer.from(renderInit({ modules: input.modules.map((m) => basename(m.path)), partitionNames: input.partitionNames })) },
  ];
  for (const module of input.modules) {
    entries.push({ kind: 'file', path: `lib/modules/${basename(module.path)}`, mode: 0o644, data: await readFile(module.path) });
  }
  // gzip from zlib writes no timestamp or file name, so the output depends on the input alone
  return gzipSync(encodeCpio(entries, input.mtime), { level: 9 });
}
