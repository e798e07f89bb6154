import test from 'ava';
import { compareVersions } from '../../runtime/core/compare-versions.js';

const order = test.macro<[string, string, number]>({
  exec(t, a, b, expected) {
    t.is(compareVersions(a, b), expected);
    t.is(compareVersions(b, a), -expected || 0);
  },
  title: (_title, a, b, expected) => `${a} ${expected < 0 ? 'sorts before' : expected > 0 ? 'sorts after' : 'equals'} ${b}`,
});

test(order, '2.10.0', '2.9.1', 1);
test(order, '1.0.0', '1.0.0', 0);
test(order, '2.0.0-rc.1', '2.0.0', -1);
test(order, '2.0.0-rc.2', '2.0.0-rc.10', -1);
test(order, '2.0.0-alpha', '2.0.0-beta', -1);
test(order, '1.0.0+build.5', '1.0.0', 0);
test(order, '3.0.0', '10.0.0', -1);
