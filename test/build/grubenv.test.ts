import test from 'ava';
import { execa } from 'execa';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { bootEnvFromGrub, bootEnvToGrub } from '../../runtime/core/boot-env.js';
import { KubeosError } from '../../runtime/core/errors.js';
import { decodeGrubEnv, encodeGrubEnv, grubEnvSize } from '../../runtime/core/grubenv.js';
import { renderGrubConfig } from '../../builder/boot/render-grub-config.js';
import { testNeeding } from '../helpers/tools.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const withEditenv = await testNeeding(['grub-editenv']);

test('an environment block is exactly 1024 bytes and decodes to what was encoded', (t) => {
  const env = bootEnvToGrub({ good: 'B', trying: 'A', triesLeft: 2, failed: undefined });
  const block = encodeGrubEnv(env);
  t.is(block.length, grubEnvSize);
  t.deepEqual(decodeGrubEnv(block), env);
  t.deepEqual(bootEnvFromGrub(decodeGrubEnv(block)), { good: 'B', trying: 'A', triesLeft: 2, failed: undefined });
});

test('a value with a newline is refused rather than corrupting the block', (t) => {
  const error = t.throws(() => encodeGrubEnv({ kubeos_good: 'A\nkubeos_try=B' }), { instanceOf: KubeosError });
  t.is(error?.code, 'E_BOOTENV');
});

test('a block of the wrong size is not taken for an environment', (t) => {
  const error = t.throws(() => decodeGrubEnv(Buffer.alloc(512, '#')), { instanceOf: KubeosError });
  t.is(error?.code, 'E_BOOTENV');
});

withEditenv('grub-editenv reads our block, and we read the block grub-editenv writes', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-grubenv-');
  const ours = join(dir, 'ours');
  await writeFile(ours, encodeGrubEnv({ kubeos_good: 'A', kubeos_try: 'B', kubeos_tries: '3', kubeos_failed: '' }));
  const listed = await execa('grub-editenv', [ours, 'list']);
  t.deepEqual(listed.stdout.split('\n'), ['kubeos_good=A', 'kubeos_try=B', 'kubeos_tries=3', 'kubeos_failed=']);
  const theirs = join(dir, 'theirs');
  await execa('grub-editenv', [theirs, 'create']);
  await execa('grub-editenv', [theirs, 'set', 'kubeos_good=B', 'kubeos_tries=1']);
  t.deepEqual(decodeGrubEnv(await readFile(theirs)), { kubeos_good: 'B', kubeos_tries: '1' });
});

test('grub.cfg counts a trying slot down once per boot and falls back when no tries are left', (t) => {
  const cfg = renderGrubConfig({ slotPartitions: { A: 2, B: 3 }, bootTries: 3, kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', cmdline: 'console=ttyS0', rootFilesystem: 'ext4', timeout: 0 });
  for (const left of [3, 2, 1]) t.true(cfg.includes(`[ "$kubeos_tries" = "${left}" ]; then\n    set kubeos_tries=${left - 1}`), `step ${left}`);
  t.false(cfg.includes('"$kubeos_tries" = "4"'));
  t.regex(cfg, /else\n\s+set kubeos_failed="\$kubeos_try"\n\s+set kubeos_try=\n/);
  // the count is saved before the kernel is loaded, so a hang still uses up a try
  t.true(cfg.indexOf('save_env') < cfg.indexOf('menuentry'));
  t.regex(cfg, /linux \(\$kubeos_disk,gpt3\)\/boot\/vmlinuz console=ttyS0 \$kubeos_args rootfstype=ext4 kubeos\.slot=B kubeos\.boot=\$kubeos_boot kubeos\.config=\$kubeos_config/);
});

test('grub.cfg tries new kernel arguments for bootTries good boots, then boots the slot\'s committed ones', (t) => {
  const cfg = renderGrubConfig({ slotPartitions: { A: 2, B: 3 }, bootTries: 3, kernel: '/boot/vmlinuz', initrd: '/boot/initrd.img', cmdline: 'console=ttyS0', rootFilesystem: 'ext4', timeout: 0 });
  for (const left of [3, 2, 1]) t.true(cfg.includes(`[ "$kubeos_args_tries" = "${left}" ]; then\n      set kubeos_args_tries=${left - 1}\n      set kubeos_args="$kubeos_args_try"\n      set kubeos_config=trying`), `step ${left}`);
  t.regex(cfg, /set kubeos_args_try=\n\s+set kubeos_args_tries=0\n\s+set kubeos_config=fallback/);
  // each slot boots its own committed arguments; a trial only on a good boot, and counted before the kernel loads
  t.regex(cfg, /set default=slotB\n\s+set kubeos_args="\$kubeos_args_B"/);
  t.regex(cfg, /set default=slotA\n\s+set kubeos_args="\$kubeos_args_A"/);
  t.regex(cfg, /if \[ "\$kubeos_boot" = "good" \]; then/);
  t.true(cfg.lastIndexOf('save_env --file $prefix/grubenv kubeos_args_try kubeos_args_tries') < cfg.indexOf('menuentry'));
  t.regex(cfg, /export kubeos_disk kubeos_boot kubeos_args kubeos_config/);
});
