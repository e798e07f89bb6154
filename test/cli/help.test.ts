/** Every command's --help teaches: it exits 0 and shows at least one example; wrapping never breaks a word. */
import test from 'ava';
import { kubeos } from '../helpers/cli.js';

const leaves = [
  ['build'], ['bundle', 'create'], ['bundle', 'verify'], ['bundle', 'info'], ['bundle', 'diff'], ['channel', 'show'], ['keygen'], ['publish'],
  ['oci', 'build'], ['operator', 'run'], ['qemu', 'boot'], ['rollout', 'status'], ['rollout', 'undo'],
  ['agent', 'status'], ['agent', 'upgrade'], ['agent', 'commit'], ['agent', 'rollback'], ['agent', 'daemon'],
  ['agent', 'config', 'apply'], ['agent', 'config', 'status'], ['agent', 'config', 'rollback'], ['agent', 'config', 'commit'],
];

for (const words of leaves) {
  test(`kubeos ${words.join(' ')} --help shows an example`, async (t) => {
    const result = await kubeos([...words, '--help']);
    t.is(result.exitCode, 0, result.stderr);
    t.regex(result.stdout, /\nExamples:\n {2}\S/);
  });
}

test('help wraps between words: yargs 17 printed "o ff" and "--version 1. 4.0"', async (t) => {
  const joined = (text: string) => text.replace(/\n\s+/g, ' ');
  t.true(joined((await kubeos(['operator', 'run', '--help'])).stdout).includes('"off" serves none'));
  t.true(joined((await kubeos(['agent', 'upgrade', '--help'])).stdout).includes('--image-version 1.4.0'));
});
