/** What every kubeos bin does around its commands (runtime/cli/run-program.ts), in-process. */
import test from 'ava';
import type { Argv, CommandModule } from 'yargs';
import { runProgram } from '../../runtime/cli/run-program.js';

interface UsageInternals {
  getInternalMethods(): { getUsageInstance(): { hasCachedHelpMessage(): boolean } };
}

test('a command\'s handler starts without yargs rendering the whole --help text first (start-up cost nothing uses)', async (t) => {
  let instance: Argv | undefined;
  let cachedWhileRunning: boolean | undefined;
  const probe: CommandModule = {
    command: 'probe',
    describe: 'a command that looks at the help cache once it has started',
    builder: (y) => {
      instance = y;
      return y.option('level', { type: 'number', description: 'an option, so the help text has a table to render' });
    },
    handler: async () => {
      // yargs caches the help text right after the handler's first await hands control back
      await new Promise((resolve) => setImmediate(resolve));
      cachedWhileRunning = (instance as unknown as UsageInternals).getInternalMethods().getUsageInstance().hasCachedHelpMessage();
    },
  };
  await runProgram({ usage: '$0 probe', commands: [probe], hint: 'probe --help' }, ['probe', '--level', '2']);
  t.is(process.exitCode ?? 0, 0);
  t.is(cachedWhileRunning, false);
});
