#!/usr/bin/env node
/** The `kubeos` bin. Commands are thin; this file holds the one `catch` that prints and exits. */
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { commands } from './commands.js';
import { printError } from './output.js';
import { listOptionsOf, refuseRepeatedOptions, usageError, wantsJson } from '../../runtime/cli/usage.js';

const argv = hideBin(process.argv);
const json = wantsJson(argv);

try {
  let cli = yargs(argv)
    .scriptName('kubeos')
    .usage('$0 <command> [options]\n\nBuild immutable A/B container-OS images, sign and publish updates, and roll them out.')
    .option('json', { type: 'boolean', description: 'Print results (and errors) as JSON for machines', global: true })
    .demandCommand(1, 'name a command: kubeos <command> --help shows its options')
    .strict()
    .recommendCommands()
    .wrap(Math.min(110, process.stdout.columns || 100))
    .fail((message, error, instance) => {
      throw error ?? usageError(message, instance as never, 'kubeos --help lists commands; kubeos <command> --help their options');
    })
    .epilogue('Docs: README.md. Exit codes: 0 ok, 1 failed (see the error code), 2 bad usage.');
  for (const command of commands) cli = cli.command(command);
  const root = cli;
  cli = cli.middleware((args) => refuseRepeatedOptions(args, listOptionsOf(root)), true);
  await cli.parseAsync();
} catch (error) {
  process.exitCode = printError(error, json);
}
