/**
 * What every kubeos program's bin does around its commands: yargs with `--json`, strict options,
 * "did you mean", refused repeats, and the one `catch` that prints an error and sets the exit code.
 * The programs: `kubeos` (builder/cli), the host agent (runtime/agent/cli), the operator (runtime/operator/cli).
 */
import yargs, { type CommandModule } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { printError } from './output.js';
import { listOptionsOf, refuseRepeatedOptions, usageError, wantsJson } from './usage.js';

export interface Program {
  /** The first lines of `--help`. */
  usage: string;
  commands: readonly CommandModule<any, any>[];
  /** Where a usage error points. */
  hint: string;
  epilogue?: string;
}

export async function runProgram(program: Program, argv: string[] = hideBin(process.argv)): Promise<void> {
  try {
    let cli = yargs(argv)
      .scriptName('kubeos')
      .usage(program.usage)
      .option('json', { type: 'boolean', description: 'Print results (and errors) as JSON for machines', global: true })
      .demandCommand(1, `name a command: ${program.hint}`)
      .strict()
      .recommendCommands()
      .wrap(Math.min(110, process.stdout.columns || 100))
      .fail((message, error, instance) => {
        throw error ?? usageError(message, instance as never, program.hint);
      })
      .epilogue(program.epilogue ?? 'Exit codes: 0 ok, 1 failed (see the error code), 2 bad usage.');
    for (const command of program.commands) cli = cli.command(command);
    const root = cli;
    skipHelpCache(root);
    await cli.middleware((args) => refuseRepeatedOptions(args, listOptionsOf(root)), true).parseAsync();
  } catch (error) {
    process.exitCode = printError(error, wantsJson(argv));
  }
}

/**
 * yargs renders the whole `--help` text each time a command's handler starts, in case the handler
 * shows it later: 4 ms of every command's start-up, 16 on a loaded host. No kubeos handler shows
 * help, and failures leave through `.fail()`, which throws instead of printing it, so the text is
 * never used. `--help` itself does not go through the cache.
 */
function skipHelpCache(instance: unknown): void {
  const usage = (instance as { getInternalMethods?: () => { getUsageInstance?: () => { cacheHelpMessage?: unknown } } }).getInternalMethods?.().getUsageInstance?.();
  if (usage !== undefined && typeof usage.cacheHelpMessage === 'function') usage.cacheHelpMessage = () => {};
}
