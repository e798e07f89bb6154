/**
 * Every child process of kubeos starts here: argv arrays only, a timeout and an AbortSignal on each
 * call, and a preflight that names a missing tool together with the Debian package that has it.
 */
import { access, constants } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import type { Options, ResultPromise } from 'execa';
import { KubeosError } from './errors.js';

/**
 * execa is loaded on the first child process, not with this module: it is some 145 KB of bundled
 * code, and commands that start nothing (`agent status`) paid ~40 ms to parse it at start-up.
 */
let loaded: Promise<typeof import('execa')> | undefined;
const loadExeca = async () => (loaded ??= import('execa'));

/** Tool → Debian package that provides it. Keep one line per tool. */
export const toolPackages = {
  'mke2fs': 'e2fsprogs',
  'e2fsck': 'e2fsprogs',
  'debugfs': 'e2fsprogs',
  'dumpe2fs': 'e2fsprogs',
  'tune2fs': 'e2fsprogs',
  'mkfs.vfat': 'dosfstools',
  'fsck.vfat': 'dosfstools',
  'mcopy': 'mtools',
  'mmd': 'mtools',
  'mdir': 'mtools',
  'mtype': 'mtools',
  'sgdisk': 'gdisk',
  'grub-mkimage': 'grub-common',
  'grub-editenv': 'grub-common',
  'qemu-system-x86_64': 'qemu-system-x86',
  'qemu-img': 'qemu-utils',
  'busybox': 'busybox-static',
  'cpio': 'cpio',
  'zstd': 'zstd',
  'casync': 'casync',
  'dpkg-deb': 'dpkg',
  'apt-get': 'apt',
  'apt-cache': 'apt',
  'modinfo': 'kmod',
  'depmod': 'kmod',
  'mmdebstrap': 'mmdebstrap',
  'mksquashfs': 'squashfs-tools',
  'unsquashfs': 'squashfs-tools',
  'mkfs.erofs': 'erofs-utils',
  'setfattr': 'attr',
  'getfattr': 'attr',
  'curl': 'curl',
  'sha256sum': 'coreutils',
  'dd': 'coreutils',
  'ldd': 'libc-bin',
  'openssl': 'openssl',
  'skopeo': 'skopeo',
  'umoci': 'umoci',
  'chroot': 'coreutils',
  'nsenter': 'util-linux',
} as const;

export type Tool = keyof typeof toolPackages;

const defaultTimeoutMs = 10 * 60 * 1000;
const extraDirs = ['/usr/local/sbin', '/usr/sbin', '/sbin'];

/** KUBEOS_PATH replaces the search path entirely (for unusual installs, and to test preflights). */
function searchPath(): string[] {
  const override = process.env['KUBEOS_PATH'];
  if (override !== undefined) return override.split(delimiter).filter(Boolean);
  const dirs = (process.env['PATH'] ?? '').split(delimiter).filter(Boolean);
  for (const dir of extraDirs) if (!dirs.includes(dir)) dirs.push(dir);
  return dirs;
}

const resolved = new Map<string, string>();

/** Absolute path of a tool, or undefined when it is not installed. */
export async function findTool(tool: string): Promise<string | undefined> {
  const known = resolved.get(tool);
  if (known !== undefined) return known;
  for (const dir of searchPath()) {
    const candidate = join(dir, tool);
    try {
      await access(candidate, constants.X_OK);
      resolved.set(tool, candidate);
      return candidate;
    } catch {
      // not in this directory
    }
  }
  return undefined;
}

/** Fails with E_TOOL_MISSING naming every missing tool and its Debian package at once. */
export async function requireTools(tools: readonly Tool[]): Promise<void> {
  const missing: Tool[] = [];
  for (const tool of tools) if ((await findTool(tool)) === undefined) missing.push(tool);
  if (missing.length === 0) return;
  const packages = [...new Set(missing.map((tool) => toolPackages[tool]))];
  throw new KubeosError(
    'E_TOOL_MISSING',
    `missing host tool${missing.length > 1 ? 's' : ''}: ${missing.map((t) => `${t} (Debian package ${toolPackages[t]})`).join(', ')}`,
    { hint: `install with: apt-get install ${packages.join(' ')} (or run scripts/install-deps.sh)`, details: { missing, packages } },
  );
}

export interface RunOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  input?: string | Buffer;
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Inherit stdio (interactive use); output is then not captured. */
  inherit?: boolean;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

function execaOptions(options: RunOptions): Options {
  return {
    cwd: options.cwd,
    env: { ...options.env, PATH: searchPath().join(delimiter) },
    extendEnv: true,
    input: options.input,
    timeout: options.timeoutMs ?? defaultTimeoutMs,
    cancelSignal: options.signal,
    stdio: options.inherit ? 'inherit' : 'pipe',
    stripFinalNewline: false,
  };
}

/** Runs a tool to completion; a non-zero exit becomes E_TOOL_FAILED carrying its stderr. */
export async function run(tool: Tool, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const path = await findTool(tool);
  if (path === undefined) await requireTools([tool]);
  try {
    const { execa } = await loadExeca();
    const result = await execa(path ?? tool, [...args], { ...execaOptions(options), encoding: 'utf8' });
    return { stdout: String(result.stdout ?? ''), stderr: String(result.stderr ?? '') };
  } catch (error) {
    const e = error as { stderr?: unknown; shortMessage?: string; timedOut?: boolean; isCanceled?: boolean };
    const stderr = typeof e.stderr === 'string' ? e.stderr.trim() : '';
    const why = e.timedOut ? 'timed out' : e.isCanceled ? 'was cancelled' : 'failed';
    throw new KubeosError('E_TOOL_FAILED', `${tool} ${why}: ${stderr.split('\n').slice(-5).join('\n') || e.shortMessage}`, {
      cause: error,
      details: { tool, args, stderr },
    });
  }
}

/**
 * Runs a command given by configuration (the agent's reboot command, an image's health checks):
 * argv[0] is a path or a name on PATH, not one of the known tools.
 */
export async function runCommand(argv: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  const [program, ...args] = argv;
  if (program === undefined) throw new KubeosError('E_USAGE', 'an empty command was configured');
  const path = program.includes('/') ? program : await findTool(program);
  if (path === undefined) throw new KubeosError('E_TOOL_MISSING', `configured command ${program} is not installed`, { details: { missing: [program] } });
  try {
    const { execa } = await loadExeca();
    const result = await execa(path, args, { ...execaOptions(options), encoding: 'utf8' });
    return { stdout: String(result.stdout ?? ''), stderr: String(result.stderr ?? '') };
  } catch (error) {
    const e = error as { stderr?: unknown; shortMessage?: string };
    throw new KubeosError('E_TOOL_FAILED', `${argv.join(' ')} failed: ${typeof e.stderr === 'string' && e.stderr.trim() ? e.stderr.trim() : e.shortMessage}`, { cause: error, details: { argv } });
  }
}

/**
 * Starts a long-running tool. The subprocess comes back wrapped in an object because execa's
 * subprocess is itself a promise: returning it from an async function would wait for the exit.
 */
export async function spawnTool(tool: Tool, args: readonly string[], options: RunOptions & { stdin?: 'pipe' | 'ignore' | 'inherit'; stdout?: 'pipe' | 'inherit' | 'ignore' | number } = {}): Promise<{ child: ResultPromise }> {
  const path = await findTool(tool);
  if (path === undefined) await requireTools([tool]);
  const { execa } = await loadExeca();
  const child = execa(path ?? tool, [...args], {
    ...execaOptions(options),
    stdin: options.stdin ?? 'pipe',
    stdout: (options.stdout ?? 'pipe') as Options['stdout'],
    stderr: options.inherit ? 'inherit' : 'pipe',
    stdio: undefined,
    buffer: { stdout: false, stderr: true },
    reject: false,
    encoding: 'buffer',
  });
  return { child };
}
