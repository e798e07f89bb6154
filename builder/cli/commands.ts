/** Every `kubeos` command, in `--help` order. One line per command module. */
import type { CommandModule } from 'yargs';
import { buildCommand } from './commands/build.js';
import { qemuCommand } from './commands/qemu.js';

export const commands: CommandModule<any, any>[] = [
  buildCommand,
  qemuCommand,
];
