import test from 'ava';
import { compareVersions, isVersion, versionPattern, versionProblem } from '../../runtime/core/compare-versions.js';

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

const refused = test.macro<[unknown, RegExp]>({
  exec(t, value, message) {
    t.false(isVersion(value));
    t.regex(versionProblem(value) ?? '', message);
    t.false(versionPattern.test(String(value)), 'the CRD pattern refuses it too');
  },
  title: (_title, value) => `${JSON.stringify(value)} is not a version, and the reason says why`,
});
test(refused, 'v1.5.0', /write 1\.5\.0, without the "v"/);
test(refused, '1.5', /not a semantic version/);
test(refused, '01.5.0', /not a semantic version/);
test(refused, ' 1.5.0', /not a semantic version/);
test(refused, 42, /not a semantic version/);

test('a non-version is never ordered: v1.5.0 does not rank above 2.0.0, it is refused', (t) => {
  const error = t.throws(() => compareVersions('v1.5.0', '2.0.0'));
  t.regex(error.message, /without the "v"/);
});

test('what the CRD pattern accepts, semver accepts', (t) => {
  for (const v of ['1.0.0', '2.0.0-rc.1', '1.0.0+build.5', '10.20.30-alpha.1+meta', '0.0.0']) {
    t.true(versionPattern.test(v), v);
    t.true(isVersion(v), v);
  }
});
