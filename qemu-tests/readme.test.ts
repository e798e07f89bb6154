/**
 * The README, run as written: every ```sh block is run here (by the runner `npm run demo:release`
 * uses) or is the pair of commands CI itself runs. "A release, end to end" builds v1 and v2, starts
 * s3rver on 127.0.0.1:4568, publishes, and boots v1 in QEMU until its agent has upgraded it to v2
 * and committed slot B.
 */
import anyTest from 'ava';
import { readFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readmeBlocks, runBlock } from '../scripts/readme-blocks.js';
import { makeTempDir } from '../test/helpers/temp-dir.js';
import { testNeeding } from '../test/helpers/tools.js';

const test = await testNeeding(['qemu-system-x86_64', 'mke2fs', 'mkfs.vfat', 'sgdisk', 'grub-mkimage', 'busybox', 'zstd']);
const readme = await readFile(fileURLToPath(new URL('../README.md', import.meta.url)), 'utf8');
const blocks = readmeBlocks(readme);
/** The blocks this file runs, by section; the first block (no section) is CI's own two commands. */
const run = ['A release, end to end', 'Building and booting'];

anyTest('every other block of the README is a file of the checkout as it is: the layout shown is layouts/kubeos.json', async (t) => {
  const others = readmeBlocks(readme, '*').filter((b) => b.lang !== 'sh');
  t.deepEqual(others.map((b) => `${b.lang} under ${b.section}`), ['json under Layouts']);
  const { $schema: _schema, ...layout } = JSON.parse(await readFile(fileURLToPath(new URL('../layouts/kubeos.json', import.meta.url)), 'utf8')) as Record<string, unknown>;
  t.deepEqual(JSON.parse(others[0]!.code), layout);
});

anyTest('every sh block of the README is run by this file, or is the two commands CI runs', (t) => {
  t.deepEqual(blocks.map((b) => b.section), ['', ...run]);
  const first = blocks[0]!.code.trim().split('\n');
  t.is(first.length, 2);
  t.regex(first[0]!, /^bash scripts\/install-deps\.sh && npm ci && npm run demo\s/);
  t.regex(first[1]!, /^bash scripts\/install-deps\.sh && npm ci && npm test\s/, 'the second line is what .ci/run runs');
});

/** Whether something still accepts connections on 127.0.0.1:port. */
function listening(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => { socket.destroy(); resolve(true); });
    socket.once('error', () => resolve(false));
  });
}

async function runSection(t: import('ava').ExecutionContext, section: string, skip?: RegExp) {
  const dir = join(await makeTempDir(t, 'kubeos-readme-'), 'scratch');
  const code = blocks.find((b) => b.section === section)?.code;
  if (code === undefined) return t.fail(`no block under ## ${section}`);
  const result = await runBlock({ code, dir, skip, output: 'capture', timeoutMs: 25 * 60_000 });
  t.is(result.exitCode, 0, result.output.slice(-4000));
  return result.output;
}

test.serial('README "A release, end to end" runs as written: the guest on v1 upgrades itself to v2 from S3 and commits', async (t) => {
  const output = await runSection(t, 'A release, end to end');
  t.regex(output, /published 2\.0\.0 to channel stable \(serial 1\)/);
  t.regex(output, /hosts +--update-server http:\/\/127\.0\.0\.1:4568\/updates\/kubeos\/ --channel stable/);
  t.regex(output, /channel stable: minimal 2\.0\.0 \(x86_64, compatible kubeos-minimal-x86_64\)/);
  t.regex(output, /matched after [\d.]+s: kubeos: committed slot B/);
  t.false(await listening(4568), 'the S3 server the block started is gone with it');
});

test.serial('README "Building and booting" runs as written (the interactive console aside)', async (t) => {
  const output = await runSection(t, 'Building and booting', /# interactive:/);
  t.regex(output, /# skipped here: npx kubeos qemu boot out\/minimal\/disk\.img +# interactive/);
  t.regex(output, /"format": "qcow2"|qcow2/);
  t.regex(output, /matched after [\d.]+s: kubeos: ready/);
});
