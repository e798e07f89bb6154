/** The delta plan (pure): which source each chunk of the signed index comes from. */
import test from 'ava';
import type { Chunk } from '../../runtime/core/bundle/chunk-index.js';
import type { ChunkIndexInfo } from '../../runtime/core/bundle/manifest.js';
import { maxRepeatBytes, planDelta, refuseDelta } from '../../runtime/agent/plan-delta.js';

const rule = { kind: 'cdc', min: 16384, avg: 65536, max: 262144 } as const;
const id = (name: string) => `${name}-`.padEnd(64, '0');

/** An index of named chunks of `length` bytes each, and the chunks of a slot holding `names` in order. */
function indexOf(names: string[], length = 1000): ChunkIndexInfo {
  return { rule, chunks: names.map((name) => [length, id(name)] as [number, string]) };
}
function slot(names: string[], length = 1000): Chunk[] {
  return names.map((name, i) => ({ offset: i * length, length, sha256: id(name) }));
}

test('chunks the booted slot holds anywhere are read from it; the rest are fetched', (t) => {
  const plan = planDelta(slot(['c', 'a']), indexOf(['a', 'b', 'c']));
  t.deepEqual(plan.steps.map((s) => (s.from === 'seed' ? `${s.seed}@${s.seedOffset}` : s.from)), ['booted@1000', 'store', 'booted@0']);
  t.like(plan, { bytes: 3000, reusedBytes: 2000, reusedChunks: 2, resumedChunks: 0, fetchBytes: 1000, fetchChunks: 1 });
});

test('the standby is a seed only at or after the chunk\'s own offset, which this install has not overwritten yet', (t) => {
  // standby: x at 0, b at 1000, d at 2000 (what an interrupted install of an older plan left)
  const plan = planDelta(slot(['a']), indexOf(['a', 'b', 'c', 'x']), slot(['x', 'b', 'c']));
  t.deepEqual(plan.steps.map((s) => (s.from === 'seed' ? `${s.seed}@${s.seedOffset}` : s.from)), [
    'booted@0',
    'standby@1000', // same offset: read just before it is rewritten with the same bytes
    'standby@2000',
    'store', // x sits at 0 in the standby, already behind the writer when its turn comes at 3000
  ]);
  t.like(plan, { reusedChunks: 3, resumedChunks: 2, resumedBytes: 2000, fetchChunks: 1 });
});

test('the booted slot is preferred over the standby for a chunk both hold', (t) => {
  const plan = planDelta(slot(['z', 'b']), indexOf(['a', 'b']), slot(['a', 'b']));
  t.deepEqual(plan.steps.map((s) => (s.from === 'seed' ? s.seed : s.from)), ['standby', 'booted']);
});

test('a missing chunk that recurs is fetched once and repeated from memory', (t) => {
  const plan = planDelta(slot(['a']), indexOf(['a', 'n', 'm', 'n', 'n']));
  t.deepEqual(plan.steps.map((s) => s.from), ['seed', 'store', 'store', 'repeat', 'repeat']);
  t.like(plan.steps[1], { from: 'store', recurs: true });
  t.like(plan.steps[3], { from: 'repeat', step: 1 });
  t.like(plan, { fetchChunks: 2, fetchBytes: 2000 });
});

test('repeats are kept in memory only up to a bound; past it a recurring chunk is fetched again', (t) => {
  const big = 256 * 1024;
  const names = Array.from({ length: maxRepeatBytes / big + 2 }, (_, i) => `r${i}`);
  const plan = planDelta(slot(['a'], big), indexOf(['a', ...names, ...names], big));
  const repeats = plan.steps.filter((s) => s.from === 'repeat').length;
  t.is(repeats, maxRepeatBytes / big);
  t.is(plan.fetchChunks, names.length + 2);
});

test('a delta is refused when neither slot holds a chunk, or when it would fetch most of the image', (t) => {
  t.regex(refuseDelta(planDelta(slot(['x']), indexOf(['a', 'b']))) ?? '', /none of its chunks/);
  t.regex(refuseDelta(planDelta(slot(['a']), indexOf(['a', ...'bcdefghijk'.split('')]))) ?? '', /over 90%/);
  t.is(refuseDelta(planDelta(slot(['a', 'b']), indexOf(['a', 'b', 'c']))), undefined);
});
