/** Planner, spec and handshake rules, case by case. */
import test from 'ava';
import { isWithinWindow } from '../../runtime/operator/maintenance-window.js';
import { formatAge } from '../../runtime/cli/format-age.js';
import { annotations, planVersionLabels, versionLabel, type NodeView, type PodView } from '../../runtime/fleet/node-protocol.js';
import { parseOSUpgradeSpec, resolveMaxUnavailable, type Rollout } from '../../runtime/fleet/osupgrade.js';
import { planOrphanReleases, planRollout, previousVersion } from '../../runtime/operator/plan-rollout.js';
import { decideAgentAction } from '../../runtime/agent/run-node-agent.js';

const t0 = Date.UTC(2025, 0, 6, 12, 0); // a Monday

function node(name: string, extra: Partial<NodeView> = {}): NodeView {
  return { name, uid: undefined, progress: undefined, labels: {}, unschedulable: false, ready: true, readySince: t0 - 3_600_000, desiredVersion: undefined, currentVersion: '1.0.0', agentState: 'idle', stateVersion: undefined, lastError: undefined, record: undefined, ...extra };
}

function rollout(spec: Record<string, unknown> = {}): Rollout {
  return { name: 'fleet', generation: 3, spec: parseOSUpgradeSpec({ version: '2.0.0', ...spec }), pausedBy: undefined, rolledBack: undefined, failuresAcknowledged: 0, previousStatus: undefined };
}

const pod = (name: string, extra: Partial<PodView> = {}): PodView => ({ namespace: 'apps', name, ownerKind: 'ReplicaSet', mirror: false, emptyDir: false, finished: false, terminating: false, ...extra });

test('a spec gets its defaults', (t) => {
  t.like(parseOSUpgradeSpec({ version: '2.0.0' }), { channel: 'stable', maxUnavailable: 1, failureBudget: 1, paused: false, drain: { timeoutSeconds: 600, force: false, deleteEmptyDirData: false }, healthGate: { readySeconds: 120 } });
});

test('an invalid spec fails with E_OSUPGRADE_INVALID listing every problem', (t) => {
  const error = t.throws(() => parseOSUpgradeSpec({ maxUnavailable: 0, failureBudget: 'x', drain: { force: 'yes' } }));
  t.is((error as { code?: string }).code, 'E_OSUPGRADE_INVALID');
  t.deepEqual(((error as { details?: { problems: Array<{ path: string }> } }).details?.problems ?? []).map((p) => p.path), ['spec.version', 'spec.maxUnavailable', 'spec.drain.force', 'spec.failureBudget']);
});

test('percentages of maxUnavailable round down but never below one', (t) => {
  t.is(resolveMaxUnavailable('25%', 10), 2);
  t.is(resolveMaxUnavailable('10%', 5), 1);
  t.is(resolveMaxUnavailable('100%', 7), 7);
  t.is(resolveMaxUnavailable(3, 1), 3);
});

test('a window that ends before it starts runs past midnight into the next day', (t) => {
  const w = { days: ['Mon' as const], start: '22:00', end: '04:00' };
  t.true(isWithinWindow(w, Date.UTC(2025, 0, 6, 23, 0)));   // Monday 23:00
  t.true(isWithinWindow(w, Date.UTC(2025, 0, 7, 3, 59)));   // Tuesday 03:59
  t.false(isWithinWindow(w, Date.UTC(2025, 0, 7, 4, 0)));   // Tuesday 04:00
  t.false(isWithinWindow(w, Date.UTC(2025, 0, 6, 3, 0)));   // Monday 03:00 (Sunday had no window)
  t.true(isWithinWindow({ days: ['Mon'], start: '00:00', end: '00:00' }, Date.UTC(2025, 0, 6, 17, 0)));
});

test('outside every window nothing starts and the rollout waits for the next one', (t) => {
  const plan = planRollout(rollout({ maintenanceWindows: [{ days: ['Sat'], start: '01:00', end: '05:00' }] }), { nodes: [node('a')] }, t0);
  t.deepEqual(plan.actions, []);
  t.is(plan.status.phase, 'Waiting');
  t.is(plan.wakeAt, Date.UTC(2025, 0, 11, 1, 0));
  t.is(plan.waiting, 'outside every maintenance window; next opens Sat 01:00 UTC');
  t.like(plan.status.conditions.find((c) => c.type === 'Reconciling'), { status: 'True', reason: 'OutsideMaintenanceWindow' });
});

const waitingCase = test.macro((t, spec: Record<string, unknown>, nodes: NodeView[], expected: string | undefined) => {
  t.is(planRollout(rollout(spec), { nodes }, t0).waiting, expected);
});

test('waiting: paused by spec', waitingCase, { paused: true }, [node('a')], 'paused: spec.paused is true');
test('waiting: no pending node is Ready', waitingCase, {}, [node('a', { ready: false })], '1 pending node(s), none Ready and schedulable');
test('waiting: maxUnavailable reached', waitingCase, {}, [node('a', { ready: false, currentVersion: '2.0.0' }), node('b')], 'maxUnavailable 1 reached: 1 selected node(s) unavailable');
test('waiting: no node selected', waitingCase, { nodeSelector: { pool: 'gpu' } }, [node('a')], 'no node matches spec.nodeSelector {"pool":"gpu"}');
test('waiting: nothing to explain when a node starts', waitingCase, {}, [node('a')], undefined);

test('Ready, Reconciling and Stalled follow the rollout, each with the generation it is about', (t) => {
  const running = planRollout(rollout(), { nodes: [node('a')] }, t0).status.conditions;
  t.like(running.find((c) => c.type === 'Ready'), { status: 'False', reason: 'NodesUpgrading', observedGeneration: 3 });
  t.like(running.find((c) => c.type === 'Reconciling'), { status: 'True', observedGeneration: 3 });
  t.like(running.find((c) => c.type === 'Stalled'), { status: 'False' });
  const done = planRollout(rollout(), { nodes: [node('a', { currentVersion: '2.0.0' })] }, t0).status.conditions;
  t.like(done.find((c) => c.type === 'Ready'), { status: 'True', reason: 'AllNodesUpgraded' });
  t.like(done.find((c) => c.type === 'Reconciling'), { status: 'False' });
  const failedRecord = { rollout: 'fleet', version: '2.0.0', phase: 'failed' as const, since: t0, reason: 'FellBack' };
  const withFailure = planRollout({ ...rollout({ paused: true }), pausedBy: 'failure-budget' }, { nodes: [node('a', { record: failedRecord }), node('b')] }, t0);
  t.like(withFailure.status.conditions.find((c) => c.type === 'Stalled'), { status: 'True', reason: 'FailureBudgetExceeded' });
  t.like(withFailure.status.conditions.find((c) => c.type === 'Ready'), { status: 'False', reason: 'FailureBudgetExceeded' });
  t.regex(withFailure.waiting ?? '', /^paused by the failure budget: 1 node\(s\) failed, budget 1/);
});

test('the version label follows what each agent reports, and label-safe', (t) => {
  t.deepEqual(planVersionLabels([
    node('a', { currentVersion: '2.0.0', labels: { [versionLabel]: '2.0.0' } }),
    node('b', { currentVersion: '2.0.0', labels: { [versionLabel]: '1.0.0' } }),
    node('c', { currentVersion: '2.0.0+build.7' }),
    node('d', { currentVersion: undefined }),
  ]), [
    { node: 'b', patch: { metadata: { labels: { [versionLabel]: '2.0.0' } } } },
    { node: 'c', patch: { metadata: { labels: { [versionLabel]: '2.0.0_build.7' } } } },
  ]);
});

const age = test.macro((t, ms: number, expected: string) => t.is(formatAge(ms), expected));
for (const [ms, text] of [[0, '0s'], [45_000, '45s'], [119_000, '119s'], [330_000, '5m30s'], [600_000, '10m'], [179 * 60_000, '179m'], [3 * 3_600_000 + 5 * 60_000, '3h5m'], [30 * 3_600_000, '30h'], [(2 * 24 + 4) * 3_600_000, '2d4h'], [400 * 86_400_000, '400d'], [(3 * 365 + 10) * 86_400_000, '3y10d']] as const) {
  test(`an age of ${ms} ms prints as ${text}, as kubectl prints it`, age, ms, text);
}

test('a drain leaves DaemonSet, mirror and finished pods alone and evicts the rest', (t) => {
  const draining = node('a', {
    unschedulable: true,
    record: { rollout: 'fleet', version: '2.0.0', phase: 'draining', since: t0 },
    pods: [pod('web'), pod('ds', { ownerKind: 'DaemonSet' }), pod('static', { ownerKind: 'Node', mirror: true }), pod('job', { finished: true }), pod('going', { terminating: true })],
  });
  const plan = planRollout(rollout(), { nodes: [draining] }, t0 + 1000);
  t.deepEqual(plan.actions, [{ type: 'evict', node: 'a', pods: [{ namespace: 'apps', name: 'web' }] }]);
});

test('a bare pod without drain.force blocks the drain and the node fails with DrainBlocked', (t) => {
  const draining = node('a', { unschedulable: true, record: { rollout: 'fleet', version: '2.0.0', phase: 'draining', since: t0 }, pods: [pod('bare', { ownerKind: undefined })] });
  t.deepEqual(planRollout(rollout(), { nodes: [draining] }, t0 + 1000).actions, []);
  const plan = planRollout(rollout({ drain: { timeoutSeconds: 60 } }), { nodes: [draining] }, t0 + 61_000);
  t.like(plan.actions[0], { type: 'mark-failed', node: 'a', uncordon: true, record: { phase: 'failed', reason: 'DrainBlocked' } });
});

test('a node is done only after being Ready on the new version for the whole health gate', (t) => {
  const verifying = node('a', { currentVersion: '2.0.0', agentState: 'committed', stateVersion: '2.0.0', readySince: t0 + 5000, record: { rollout: 'fleet', version: '2.0.0', phase: 'verifying', since: t0 } });
  const r = rollout({ healthGate: { readySeconds: 60 } });
  t.deepEqual(planRollout(r, { nodes: [verifying] }, t0 + 64_000).actions, []);
  t.like(planRollout(r, { nodes: [verifying] }, t0 + 65_000).actions[0], { type: 'mark-done', node: 'a' });
});

test('a fell-back state left over from an earlier version is not read as the new attempt failing', (t) => {
  const upgrading = node('a', { agentState: 'fell-back', stateVersion: '1.5.0', record: { rollout: 'fleet', version: '2.0.0', phase: 'upgrading', since: t0 } });
  t.deepEqual(planRollout(rollout(), { nodes: [upgrading] }, t0 + 1000).actions, []);
});

test('nodes held by another rollout are left alone but count as unavailable', (t) => {
  const busy = node('a', { unschedulable: true, record: { rollout: 'other', version: '3.0.0', phase: 'upgrading', since: t0 } });
  const plan = planRollout(rollout(), { nodes: [busy, node('b')] }, t0);
  t.deepEqual(plan.actions, []);
});

test('a node selected by a newer OSUpgrade is left to it: an older one neither starts it nor counts it, but finishes one it holds', (t) => {
  const newer = [{ name: 'later', nodeSelector: { pool: 'web' } }];
  const web = node('a', { labels: { pool: 'web' } });
  const db = node('b', { labels: { pool: 'db' } });
  const plan = planRollout(rollout(), { nodes: [web, db], newer }, t0);
  t.deepEqual(plan.actions.map((a) => [a.type, 'node' in a ? a.node : undefined]), [['cordon', 'b']]);
  t.is(plan.status.counts.total, 1);
  // every selected node claimed by the newer one: nothing to do, and the status says why
  const onlyWeb = planRollout(rollout({ nodeSelector: { pool: 'web' } }), { nodes: [web], newer }, t0);
  t.deepEqual(onlyWeb.actions, []);
  t.is(onlyWeb.waiting, 'every node it selects (1) belongs to a newer OSUpgrade (later)');
  // mid-upgrade when the newer one appeared: the older one carries it to the end of its phase
  const holding = node('a', { labels: { pool: 'web' }, unschedulable: true, desiredVersion: '2.0.0', currentVersion: '2.0.0', agentState: 'committed', stateVersion: '2.0.0', record: { rollout: 'fleet', version: '2.0.0', phase: 'verifying', since: t0 - 600_000 } });
  const finishing = planRollout(rollout({ healthGate: { readySeconds: 5 } }), { nodes: [holding], newer }, t0);
  t.true(finishing.actions.some((a) => a.type === 'uncordon' || a.type === 'mark-done'), JSON.stringify(finishing.actions));
});

test('the status carries observedGeneration and keeps a condition\'s transition time while it holds', (t) => {
  const r = rollout();
  const first = planRollout(r, { nodes: [node('a', { currentVersion: '2.0.0' })] }, t0);
  t.is(first.status.observedGeneration, 3);
  t.is(first.status.phase, 'Complete');
  const again = planRollout({ ...r, previousStatus: first.status }, { nodes: [node('a', { currentVersion: '2.0.0' })] }, t0 + 60_000);
  t.deepEqual(again.status.conditions, first.status.conditions);
});

test('the agent upgrades to a new desired version once, and not again after it fell back', (t) => {
  const desired = { metadata: { annotations: { [annotations.desiredVersion]: '2.0.0', [annotations.desiredChannel]: 'beta' } } };
  t.deepEqual(decideAgentAction(desired, { currentVersion: '1.0.0' }, false), { type: 'upgrade', version: '2.0.0', channel: 'beta', allowDowngrade: false });
  t.is(decideAgentAction(desired, { currentVersion: '1.0.0' }, true).type, 'none');
  t.is(decideAgentAction(desired, { currentVersion: '1.0.0', state: 'fell-back', stateVersion: '2.0.0' }, false).type, 'none');
  t.is(decideAgentAction(desired, { currentVersion: '1.0.0', state: 'fell-back', stateVersion: '1.9.0' }, false).type, 'upgrade');
  t.is(decideAgentAction(desired, { currentVersion: '2.0.0' }, false).type, 'none');
});

test('previousVersion reads where the upgraded nodes came from, and refuses a mix or nothing', (t) => {
  const rec = (from: string) => ({ rollout: 'fleet', version: '2.0.0', phase: 'done' as const, since: t0, from });
  t.deepEqual(previousVersion('fleet', '2.0.0', [node('a', { currentVersion: '2.0.0', record: rec('1.0.0') }), node('b', { currentVersion: '2.0.0', record: rec('1.0.0') }), node('c')]), { version: '1.0.0', nodes: ['a', 'b'] });
  t.regex((previousVersion('fleet', '2.0.0', [node('a', { currentVersion: '2.0.0', record: rec('1.0.0') }), node('b', { currentVersion: '2.0.0', record: rec('1.1.0') })]) as { error: string }).error, /different versions \(1\.0\.0: 1, 1\.1\.0: 1\)/);
  t.regex((previousVersion('fleet', '2.0.0', [node('a')]) as { error: string }).error, /nothing to roll back/);
});

test('onFailureBudget rollback turns a spent budget into a roll-back to the previous version, once', (t) => {
  const done = node('a', { currentVersion: '2.0.0', record: { rollout: 'fleet', version: '2.0.0', phase: 'done', since: t0, from: '1.0.0' } });
  const failedNode = node('b', { record: { rollout: 'fleet', version: '2.0.0', phase: 'failed', since: t0, reason: 'FellBack', from: '1.0.0' } });
  const plan = planRollout(rollout({ onFailureBudget: 'rollback' }), { nodes: [done, failedNode, node('c')] }, t0);
  t.deepEqual(plan.actions, [{ type: 'roll-back', from: '2.0.0', to: '1.0.0', failed: 1 }]);
  const again = planRollout({ ...rollout({ onFailureBudget: 'rollback' }), rolledBack: { from: '3.0.0', to: '2.0.0' } }, { nodes: [done, failedNode, node('c')] }, t0);
  t.like(again.actions[0], { type: 'pause-rollout' }, 'a rollout rolls back once, then pauses');
});

test('nodes held by a rollout that was deleted are released; a live rollout\'s and finished ones are left alone', (t) => {
  const rec = (rollout: string, phase: 'draining' | 'upgrading' | 'verifying' | 'done') => ({ rollout, version: '2.0.0', phase, since: t0 - 60_000 });
  const nodes = [
    node('a', { unschedulable: true, record: rec('gone', 'draining') }),
    node('b', { unschedulable: false, record: rec('gone', 'verifying') }),
    node('c', { unschedulable: true, record: rec('fleet', 'upgrading') }),
    node('d', { record: rec('gone', 'done') }),
  ];
  const actions = planOrphanReleases(nodes, new Set(['fleet']), 'OSUpgrade', t0);
  t.deepEqual(actions.map((a) => [a.node, a.type === 'mark-failed' && a.uncordon]), [['a', true], ['b', false]]);
  t.like(actions[0], { record: { rollout: 'gone', phase: 'failed', since: t0, reason: 'RolloutDeleted', message: 'OSUpgrade gone was deleted while this node was draining; released' } });
});
