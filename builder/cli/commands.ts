/** Every `kubeos` command, in `--help` order. One line per command module. */
import type { CommandModule } from 'yargs';

export const commands: CommandModule<any, any>[] = [
];
