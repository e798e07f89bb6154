/**
 * Boots a disk image in QEMU (q35, OVMF UEFI firmware, TCG) with the serial console on a pipe:
 * every line goes to a log file, and callers wait for lines with a deadline. Shared by
 * `kubeos qemu boot` and qemu-tests/. QEMU is always killed when the handle is stopped or this
 * process exits, however a test ends.
 */
import { constants } from 'node:fs';
import { access, copyFile, mkdir, stat, writeFile } from 'node:fs/promises';
import { createWriteStream, type WriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ResultPromise } from 'execa';
import { KubeosError } from '../../runtime/core/errors.js';
import { requireTools, spawnTool } from '../../runtime/core/exec.js';

export const ovmfCode = '/usr/share/OVMF/OVMF_CODE_4M.fd';
export const ovmfVarsTemplate = '/usr/share/OVMF/OVMF_VARS_4M.fd';

export interface QemuOptions {
  disk: string;
  format?: 'raw' | 'qcow2';
  /** Serial console log file; its directory also holds the firmware's variable store. */
  log: string;
  memoryMiB?: number;
  /** Guest TCP address → host port on 127.0.0.1 (QEMU user network with restrict=on: nothing else is reachable). */
  forwards?: { guestAddress: string; guestPort: number; hostPort: number }[];
  signal?: AbortSignal;
}

interface Waiter {
  pattern: RegExp;
  resolve: (line: string) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
  description: string;
}

const maxPending = 20_000;
const running = new Set<ResultPromise>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function preflightQemu(disk: string): Promise<void> {
  try {
    await access(disk, constants.R_OK | constants.W_OK);
  } catch (error) {
    throw new KubeosError('E_QEMU', `disk image ${disk} cannot be opened for reading and writing: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, {
      cause: error,
      hint: 'build one with kubeos build, e.g. out/minimal/disk.img',
    });
  }
  const info = await stat(disk);
  if (!info.isFile() && !info.isBlockDevice()) {
    throw new KubeosError('E_QEMU', `disk image ${disk} is ${info.isDirectory() ? 'a directory' : 'not a regular file'}`, {
      hint: 'give the disk.img that kubeos build writes, e.g. out/minimal/disk.img',
      details: { disk },
    });
  }
  await requireTools(['qemu-system-x86_64']);
  for (const file of [ovmfCode, ovmfVarsTemplate]) {
    try {
      await access(file);
    } catch {
      throw new KubeosError('E_TOOL_MISSING', `UEFI firmware ${file} is missing`, {
        hint: 'install with: apt-get install ovmf (or run scripts/install-deps.sh)',
        details: { missing: [file], packages: ['ovmf'] },
      });
    }
  }
}

/**
 * QEMU's guestfwd to a `tcp:` target holds one host connection for the VM's whole life, so a
 * guest's second connection (or one after a reboot) would hang. A `cmd:` target runs a program
 * per connection instead: this relay joins its stdio to a fresh connection to 127.0.0.1:PORT.
 */
const relaySource = `import { connect } from 'node:net';
const socket = connect(Number(process.argv[2]), '127.0.0.1');
process.stdin.pipe(socket);
socket.pipe(process.stdout);
socket.on('close', () => process.exit(0));
socket.on('error', () => process.exit(1));
`;

/**
 * `--forward GUEST_ADDRESS:GUEST_PORT=HOST_PORT` as a forward: the guest's connections to that
 * address reach 127.0.0.1:HOST_PORT on this machine (e.g. 10.0.2.100:80=4568, an S3 server).
 */
export function parseForward(text: string): { guestAddress: string; guestPort: number; hostPort: number } {
  const match = /^(\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})=(?:127\.0\.0\.1:)?(\d{1,5})$/.exec(text);
  const ports = match === null ? [] : [Number(match[2]), Number(match[3])];
  if (match === null || ports.some((p) => p < 1 || p > 65535) || match[1]!.split('.').some((octet) => Number(octet) > 255)) {
    throw new KubeosError('E_USAGE', `--forward ${text} is not GUEST_ADDRESS:GUEST_PORT=HOST_PORT`, {
      hint: 'e.g. --forward 10.0.2.100:80=4568: the guest\'s http://10.0.2.100/ is this machine\'s 127.0.0.1:4568 (ports 1 to 65535)',
      details: { forward: text },
    });
  }
  return { guestAddress: match[1]!, guestPort: ports[0]!, hostPort: ports[1]! };
}

export function qemuArgs(options: QemuOptions, varsFile: string, console: 'pipe' | 'interactive', relay?: string): string[] {
  const args = [
    '-machine', 'q35', '-accel', 'tcg', '-m', String(options.memoryMiB ?? 512), '-smp', '1',
    '-nodefaults', '-no-user-config', '-display', 'none',
    '-drive', `if=pflash,format=raw,unit=0,readonly=on,file=${ovmfCode}`,
    '-drive', `if=pflash,format=raw,unit=1,file=${varsFile}`,
    '-drive', `if=virtio,format=${options.format ?? 'raw'},file=${options.disk}`,
    '-serial', console === 'pipe' ? 'stdio' : 'mon:stdio',
    '-device', 'virtio-rng-pci',
  ];
  if (options.forwards && options.forwards.length > 0) {
    const fwd = options.forwards.map((f) => `guestfwd=tcp:${f.guestAddress}:${f.guestPort}-cmd:${process.execPath} ${relay} ${f.hostPort}`).join(',');
    args.push('-netdev', `user,id=net0,restrict=on,${fwd}`, '-device', 'virtio-net-pci,netdev=net0');
  } else {
    args.push('-nic', 'none');
  }
  return args;
}

/** A fresh copy of OVMF's variable store next to the log, kept across reboots of this VM. */
async function prepareVars(log: string): Promise<string> {
  await mkdir(dirname(log), { recursive: true });
  const vars = join(dirname(log), 'OVMF_VARS.fd');
  await copyFile(ovmfVarsTemplate, vars);
  return vars;
}

export class QemuVm {
  private readonly pending: string[] = [];
  private readonly tail: string[] = [];
  private partial = '';
  private waiters: Waiter[] = [];
  private exited: string | undefined;
  readonly done: Promise<void>;

  private constructor(private readonly child: ResultPromise, private readonly logStream: WriteStream, readonly log: string) {
    running.add(child);
    child.stdout?.on('data', (chunk: Buffer) => this.onData(chunk));
    this.done = (async () => {
      const result = await child;
      running.delete(child);
      const stderr = result.stderr ? Buffer.from(result.stderr as Uint8Array).toString('utf8').trim().slice(-500) : '';
      this.exited = `QEMU exited (code ${String(result.exitCode)}${result.signal ? `, signal ${result.signal}` : ''})${stderr ? `: ${stderr}` : ''}`;
      for (const waiter of this.waiters) {
        clearTimeout(waiter.timer);
        waiter.reject(this.failure('E_QEMU', `${this.exited} before the console showed ${waiter.description}`));
      }
      this.waiters = [];
      await new Promise<void>((resolve) => this.logStream.end(resolve));
    })();
  }

  static async start(options: QemuOptions): Promise<QemuVm> {
    await preflightQemu(options.disk);
    const vars = await prepareVars(options.log);
    const relay = join(dirname(options.log), 'guestfwd-relay.mjs');
    await writeFile(relay, relaySource);
    const logStream = createWriteStream(options.log);
    const { child } = await spawnTool('qemu-system-x86_64', qemuArgs(options, vars, 'pipe', relay), { stdin: 'pipe', timeoutMs: 0, signal: options.signal });
    return new QemuVm(child, logStream, options.log);
  }

  private onData(chunk: Buffer): void {
    this.logStream.write(chunk);
    const text = this.partial + chunk.toString('utf8');
    const lines = text.split(/\r?\n/);
    this.partial = lines.pop() ?? '';
    // firmware and GRUB paint the screen with escape sequences: match and report the text alone
    for (const raw of lines) this.onLine(raw.replace(/\x1b\[[0-9;=?]*[A-Za-z]|\r/g, ''));
  }

  private onLine(line: string): void {
    this.tail.push(line);
    if (this.tail.length > 30) this.tail.shift();
    if (this.match(line)) return;
    this.pending.push(line);
    if (this.pending.length > maxPending) this.pending.shift();
  }

  private match(line: string): boolean {
    const waiter = this.waiters.find((w) => w.pattern.test(line));
    if (!waiter) return false;
    this.waiters = this.waiters.filter((w) => w !== waiter);
    clearTimeout(waiter.timer);
    // as when the line was already there: what came before the match is dropped, so a later
    // wait never finds a line older than the one this wait returned
    this.pending.length = 0;
    waiter.resolve(line);
    return true;
  }

  /**
   * Resolves with the first console line matching `pattern` since the previous match; lines before
   * it are dropped. Rejects with E_QEMU_TIMEOUT (naming the log) after `timeoutMs`.
   */
  waitFor(pattern: RegExp, timeoutMs: number): Promise<string> {
    const index = this.pending.findIndex((line) => pattern.test(line));
    if (index >= 0) {
      const line = this.pending[index] as string;
      this.pending.splice(0, index + 1);
      return Promise.resolve(line);
    }
    this.pending.length = 0;
    if (this.exited !== undefined) return Promise.reject(this.failure('E_QEMU', `${this.exited} before the console showed ${String(pattern)}`));
    return new Promise((resolve, reject) => {
      const description = String(pattern);
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w.timer !== timer);
        reject(this.failure('E_QEMU_TIMEOUT', `the console did not show ${description} within ${timeoutMs / 1000}s`));
      }, timeoutMs);
      this.waiters.push({ pattern, resolve, reject, timer, description });
    });
  }

  /** Types a line on the serial console. */
  send(line: string): void {
    this.child.stdin?.write(`${line}\n`);
  }

  /** Kills QEMU at once (like pulling the power) and waits for it to be gone. */
  async stop(): Promise<void> {
    if (this.exited === undefined) this.child.kill('SIGKILL');
    await this.done;
  }

  private failure(code: 'E_QEMU' | 'E_QEMU_TIMEOUT', message: string): KubeosError {
    const last = this.tail.slice(-12).map((line) => `  | ${line}`).join('\n');
    return new KubeosError(code, `${message}; console log: ${this.log}\nlast console lines:\n${last}`, {
      hint: 'the last console lines are in details.tail; the whole console is in the log file',
      details: { log: this.log, tail: [...this.tail] },
    });
  }
}

/** Interactive boot: the serial console on this terminal (Ctrl-A X quits QEMU). */
export async function runInteractive(options: Omit<QemuOptions, 'log'> & { stateDir: string }): Promise<number> {
  await preflightQemu(options.disk);
  const vars = await prepareVars(join(options.stateDir, 'console.log'));
  const relay = join(options.stateDir, 'guestfwd-relay.mjs');
  await writeFile(relay, relaySource);
  const { child } = await spawnTool('qemu-system-x86_64', qemuArgs({ ...options, log: '' }, vars, 'interactive', relay), { inherit: true, stdin: 'inherit', stdout: 'inherit', timeoutMs: 0, signal: options.signal });
  running.add(child);
  const result = await child;
  running.delete(child);
  return typeof result.exitCode === 'number' ? result.exitCode : 1;
}
