/** `kubeos qemu boot`: boot a disk image under QEMU + OVMF (TCG), interactively or waiting for a line. */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { CommandModule } from 'yargs';
import { KubeosError } from '../../../runtime/core/errors.js';
import { parseForward, preflightQemu, QemuVm, runInteractive } from '../../qemu/start-qemu.js';
import { makeProgress, printResult, type GlobalArgs } from '../../../runtime/cli/output.js';

interface BootArgs extends GlobalArgs {
  disk: string;
  expect?: string;
  timeout: number;
  memory: number;
  log?: string;
  format?: 'raw' | 'qcow2';
  forward?: string[];
}

function compile(pattern: string): RegExp {
  try {
    return new RegExp(pattern);
  } catch (error) {
    throw new KubeosError('E_USAGE', `--expect is not a valid regular expression: ${(error as Error).message}`, { cause: error });
  }
}

const bootCommand: CommandModule<GlobalArgs, BootArgs> = {
  command: 'boot <disk>',
  describe: 'Boot a disk image (UEFI, serial console); with --expect, wait for a console line and exit',
  builder: (y) => y
    .positional('disk', { type: 'string', demandOption: true, describe: 'disk.img (raw) or disk.qcow2' })
    .option('expect', { type: 'string', describe: 'Regular expression: exit 0 when a console line matches, 1 on timeout' })
    .option('timeout', { type: 'number', default: 180, describe: 'Seconds to wait for --expect' })
    .option('memory', { type: 'number', default: 512, describe: 'Guest memory in MiB' })
    .option('log', { type: 'string', describe: 'Serial console log file (default: a new temp dir)' })
    .option('format', { choices: ['raw', 'qcow2'] as const, describe: 'Disk format (default: from the file name)' })
    .option('forward', { type: 'string', array: true, describe: 'GUEST_ADDRESS:PORT=HOST_PORT: the guest reaches this machine\'s 127.0.0.1:HOST_PORT there (nothing else; repeatable). Without it the guest has no network' })
    .example('$0 qemu boot out/minimal/disk.img', 'Interactive serial console; Ctrl-A X quits')
    .example('$0 qemu boot out/minimal/disk.img --expect "kubeos: ready" --timeout 120', 'CI: wait until the system is up')
    .example('$0 qemu boot out/v1/disk.img --forward 10.0.2.100:80=4568 --expect "kubeos: committed slot B" --timeout 900', 'an image built with --update-server http://10.0.2.100/updates/kubeos/ fetches from an S3 server on 127.0.0.1:4568')
    .epilogue('Runs qemu-system-x86_64 -accel tcg with OVMF. The disk is used in place: changes persist.') as any,
  handler: async (args) => {
    const disk = resolve(args.disk);
    const format = args.format ?? (disk.endsWith('.qcow2') ? 'qcow2' : 'raw');
    if (!Number.isFinite(args.timeout) || args.timeout <= 0) throw new KubeosError('E_USAGE', `--timeout must be a positive number of seconds, got ${args.timeout}`);
    const pattern = args.expect === undefined ? undefined : compile(args.expect);
    const forwards = (args.forward ?? []).map(String).map(parseForward);
    // before any temp dir is made: a missing disk or firmware leaves nothing behind
    await preflightQemu(disk);
    if (pattern === undefined) {
      const stateDir = await mkdtemp(join(tmpdir(), 'kubeos-qemu-'));
      try {
        process.exitCode = await runInteractive({ disk, format, memoryMiB: args.memory, forwards, stateDir });
      } finally {
        await rm(stateDir, { recursive: true, force: true });
      }
      return;
    }
    const log = resolve(args.log ?? join(await mkdtemp(join(tmpdir(), 'kubeos-qemu-')), 'console.log'));
    const progress = makeProgress(args);
    progress(`booting ${args.disk} (console log: ${log})`);
    const started = Date.now();
    const vm = await QemuVm.start({ disk, format, log, memoryMiB: args.memory, forwards });
    try {
      const line = await vm.waitFor(pattern, args.timeout * 1000);
      const seconds = (Date.now() - started) / 1000;
      printResult(args, { matched: line, seconds, log }, () => `matched after ${seconds.toFixed(1)}s: ${line}\nconsole log: ${log}`);
    } finally {
      await vm.stop();
    }
  },
};

export const qemuCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'qemu <command>',
  describe: 'Boot-test images in QEMU',
  builder: (y) => y.command(bootCommand).demandCommand(1, 'name a qemu command: boot') as any,
  handler: () => {},
};
