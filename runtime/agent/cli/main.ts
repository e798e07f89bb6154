#!/usr/bin/env node
/** The agent's own bin, bundled into images as /usr/bin/kubeos (only `kubeos agent ...`). */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { printError } from '../../cli/output.js';
import { listOptionsOf, refuseRepeatedOptions, usageError, wantsJson } from '../../cli/usage.js';
import { agentCommand } from './agent-command.js';

const argv = hideBin(process.argv);
try {
  const cli = yargs(argv);
  await cli
    .scriptName('kubeos')
    .option('json', { type: 'boolean', description: 'Print results (and errors) as JSON', global: true })
    .command(agentCommand)
    .middleware((args) => refuseRepeatedOptions(args, listOptionsOf(cli)), true)
    .demandCommand(1, 'name a command: kubeos agent --help')
    .strict()
    .fail((message, error, instance) => {
      throw error ?? usageError(message, instance as never, 'kubeos agent --help lists the commands');
    })
    .parseAsync();
} catch (error) {
  process.exitCode = printError(error, wantsJson(argv));
}
