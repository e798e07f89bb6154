/** The progress reporter of both CLIs, with a fake clock: what a CI log, a terminal and --json get. */
import test from 'ava';
import { makeProgress } from '../../runtime/cli/output.js';

function recorder(options: { json?: boolean; tty?: boolean }) {
  let clock = 0;
  const out: string[] = [];
  const progress = makeProgress({ json: options.json }, { tty: options.tty ?? false, write: (text) => out.push(text), now: () => clock });
  return { progress, out, tick: (ms: number) => { clock += ms; } };
}

const MiB = 1048576;

test('in a log: a line when a step starts, then one per 10% or per 10 s, never a lone 0%', (t) => {
  const r = recorder({});
  for (let i = 0; i <= 100; i++) {
    r.progress('compress', i / 100, { done: i * MiB, total: 100 * MiB });
    r.tick(100);
  }
  r.progress('write bundle');
  t.is(r.out.length, 12, r.out.join(''));
  t.is(r.out[0], 'compress 0%, 0.0 MiB of 100 MiB\n');
  t.regex(r.out[5] ?? '', /^compress 50%, 50 MiB of 100 MiB, 10 MiB\/s, ETA 5 s\n$/);
  t.is(r.out[11], 'write bundle\n');
});

test('in a log, a slow step still prints every 10 s', (t) => {
  const r = recorder({});
  r.progress('upload', 0, { done: 0, total: 100 * MiB });
  for (let s = 1; s <= 30; s++) {
    r.tick(1000);
    r.progress('upload', s / 1000, { done: s * 100_000, total: 100 * MiB });
  }
  t.is(r.out.length, 4, r.out.join(''));
});

test('with --json, progress is NDJSON on stderr at the same cadence', (t) => {
  const r = recorder({ json: true });
  for (let i = 0; i <= 10; i++) r.progress('compress', i / 10, { done: i, total: 10 });
  const events = r.out.map((line) => JSON.parse(line) as { event: string; step: string; fraction: number; done: number; total: number });
  t.is(events.length, 11);
  t.like(events[10], { event: 'progress', step: 'compress', fraction: 1, done: 10, total: 10 });
});

test('on a terminal, one line rewritten in place, a new line per step', (t) => {
  const r = recorder({ tty: true });
  r.progress('compress', 0.5);
  r.progress('compress', 0.5);
  r.progress('write bundle');
  r.progress('done');
  t.deepEqual(r.out, ['\r\x1b[Kcompress 50%', '\n', '\r\x1b[Kwrite bundle', '\n', '\r\x1b[Kdone', '\n']);
});
