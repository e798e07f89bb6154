/** Every `kubeos` command, in `--help` order. One line per command module. */
import type { CommandModule } from 'yargs';
import { keygenCommand } from './commands/keygen.js';
import { bundleCommand } from './commands/bundle.js';
import { publishCommand } from './commands/publish.js';
import { channelCommand } from './commands/channel.js';
import { buildCommand } from './commands/build.js';
import { qemuCommand } from './commands/qemu.js';
import { agentCommand } from '../../runtime/agent/cli/agent-command.js';
import { operatorCommand } from './commands/operator.js';
import { rolloutCommand } from './commands/rollout.js';

export const commands: CommandModule<any, any>[] = [
  keygenCommand,
  bundleCommand,
  publishCommand,
  channelCommand,
  buildCommand,
  qemuCommand,
  agentCommand,
  operatorCommand,
  rolloutCommand,
];
