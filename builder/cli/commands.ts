/** Every `kubeos` command, in `--help` order: the image, the update, the host, the fleet. */
import type { CommandModule } from 'yargs';
import { agentCommand } from '../../runtime/agent/cli/agent-command.js';
import { buildCommand } from './commands/build.js';
import { bundleCommand } from './commands/bundle.js';
import { channelCommand } from './commands/channel.js';
import { keygenCommand } from './commands/keygen.js';
import { ociCommand } from './commands/oci.js';
import { operatorCommand } from '../../runtime/operator/cli/operator-command.js';
import { publishCommand } from './commands/publish.js';
import { qemuCommand } from './commands/qemu.js';
import { rolloutCommand } from '../../runtime/operator/cli/rollout-command.js';

export const commands: CommandModule<any, any>[] = [
  buildCommand,
  qemuCommand,
  keygenCommand,
  bundleCommand,
  publishCommand,
  channelCommand,
  agentCommand,
  operatorCommand,
  rolloutCommand,
  ociCommand,
];
