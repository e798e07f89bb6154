/** OSConfig rules, case by case: the spec, its digest, the planner run on the configuration's side of each node, and the agent's decision. */
import test from 'ava';
import { agentConfigReportPatch, configAnnotations, configKeys, configView, readNodeView, type NodeLike, type NodeView } from '../../runtime/fleet/node-protocol.js';
import { configDigest, readConfigRollout } from '../../runtime/fleet/osconfig.js';
import { parseOSConfig } from '../../runtime/core/os-config.js';
import { planRollout } from '../../runtime/operator/plan-rollout.js';
import { decideAgentAction } from '../../runtime/agent/run-node-agent.js';

const decideConfigAction = (node: NodeLike, local: Parameters<typeof decideAgentAction>[1], busy: boolean) => decideAgentAction(node, local, busy, configKeys);

const t0 = Date.UTC(2025, 0, 6, 12, 0);

const object = (spec: unknown, name = 'tuning') => ({ metadata: { name, generation: 2 }, spec });

function node(name: string, annotations: Record<string, string> = {}, extra: { unschedulable?: boolean } = {}): NodeView {
  const raw: NodeLike = {
    metadata: { name, annotations: { 'kubeos.io/current-version': '1.0.0', ...annotations } },
    spec: { unschedulable: extra.unschedulable === true },
    status: { conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: new Date(t0 - 3_600_000).toISOString() }] },
  };
  return configView(readNodeView(raw));
}

test('an OSConfig spec gets the rollout defaults, and its configuration a digest that ignores the order of sysctl keys', (t) => {
  const a = readConfigRollout(object({ config: { sysctl: { 'vm.swappiness': 10, 'net.core.somaxconn': '1024' } } }));
  const b = readConfigRollout(object({ config: { sysctl: { 'net.core.somaxconn': 1024, 'vm.swappiness': '10' } } }));
  t.is(a.digest, b.digest);
  t.regex(a.digest, /^config-[0-9a-f]{16}$/);
  t.like(a.rollout.spec, { version: a.digest, channel: 'tuning', maxUnavailable: 1, failureBudget: 1, onFailureBudget: 'pause', allowDowngrade: false });
  t.false(a.rollout.drainFirst, 'a sysctl needs no reboot, so no drain');
  t.not(configDigest(parseOSConfig({ sysctl: { 'vm.swappiness': 11 } }, 'x')), a.digest);
  t.true(readConfigRollout(object({ config: { kernelArgs: { add: ['quiet'] } } })).rollout.drainFirst, 'kernel arguments need a trial boot: drain first');
});

test('an invalid OSConfig lists every problem of the spec and of its configuration, with paths under spec.config', (t) => {
  const error = t.throws(() => readConfigRollout(object({ version: '2.0.0', maxUnavailable: 0, config: { sysctl: { 'bad key': 1 }, swap: {} } })));
  t.is((error as { code?: string }).code, 'E_OSCONFIG_INVALID');
  const paths = ((error as { details?: { problems: Array<{ path: string }> } }).details?.problems ?? []).map((p) => p.path);
  t.deepEqual(paths, ['spec.version', 'spec.maxUnavailable', 'spec.config.swap', 'spec.config.sysctl["bad key"]']);
  t.regex((error as Error).message, /^tuning: /);
  const missing = t.throws(() => readConfigRollout(object({})));
  t.regex(missing.message, /spec\.config: expected the configuration/);
});

test('a configuration without a reboot goes from pending straight to applying, one node at a time, and never cordons', (t) => {
  const { rollout, digest } = readConfigRollout(object({ config: { sysctl: { 'vm.swappiness': 10 } }, healthGate: { readySeconds: 0 } }));
  const plan = planRollout(rollout, { nodes: [node('a'), node('b')] }, t0);
  t.deepEqual(plan.actions.map((a) => [a.type, 'node' in a ? a.node : '']), [['set-desired-version', 'a']]);
  t.like(plan.actions[0], { version: digest, channel: 'tuning', starts: true, record: { phase: 'upgrading', version: digest } });
  t.like(plan.status.counts, { pending: 1, upgrading: 1 });
  t.is(plan.status.phase, 'Progressing', 'a node just started is in flight: not Complete');
  // the agent committed it: verifying, then done; the next node starts only after
  const applied = node('a', {
    [configAnnotations.applied]: digest, [configAnnotations.state]: 'committed', [configAnnotations.stateFor]: digest,
    [configAnnotations.rollout]: JSON.stringify({ rollout: 'tuning', version: digest, phase: 'upgrading', since: new Date(t0).toISOString() }),
  });
  const next = planRollout(rollout, { nodes: [applied, node('b')] }, t0 + 1000);
  t.deepEqual(next.actions.map((a) => a.type), ['uncordon']);
});

test('a configuration with kernel arguments drains the node first', (t) => {
  const { rollout } = readConfigRollout(object({ config: { kernelArgs: { add: ['quiet'] } } }));
  const plan = planRollout(rollout, { nodes: [node('a')] }, t0);
  t.deepEqual(plan.actions.map((a) => a.type), ['cordon']);
});

test('a node in flight for an OSUpgrade is not started by an OSConfig, and the other way round', (t) => {
  const { rollout } = readConfigRollout(object({ config: { sysctl: { 'vm.swappiness': 10 } } }));
  const upgrading = node('a', { 'kubeos.io/rollout': JSON.stringify({ rollout: 'fleet', version: '2.0.0', phase: 'upgrading', since: new Date(t0).toISOString() }) });
  t.deepEqual(planRollout(rollout, { nodes: [upgrading] }, t0).actions, []);
  const doneUpgrading = node('a', { 'kubeos.io/rollout': JSON.stringify({ rollout: 'fleet', version: '2.0.0', phase: 'done', since: new Date(t0).toISOString() }) });
  t.is(planRollout(rollout, { nodes: [doneUpgrading] }, t0).actions.length, 1, 'a finished upgrade holds nothing');
  // the upgrade's own view sees the configuration's record as the other one
  const configuring = readNodeView({ metadata: { name: 'a', annotations: { [configAnnotations.rollout]: JSON.stringify({ rollout: 'tuning', version: 'config-1', phase: 'verifying', since: new Date(t0).toISOString() }) } } });
  t.like(configuring.otherRecord, { rollout: 'tuning', phase: 'verifying' });
});

test('a node whose agent rolled the configuration back fails as RolledBack', (t) => {
  const { rollout, digest } = readConfigRollout(object({ config: { sysctl: { 'vm.swappiness': 10 } }, failureBudget: 2 }));
  const rolledBack = node('a', {
    [configAnnotations.state]: 'fell-back', [configAnnotations.stateFor]: digest, [configAnnotations.lastError]: 'E_CONFIG_ROLLED_BACK: check 10-ping failed',
    [configAnnotations.rollout]: JSON.stringify({ rollout: 'tuning', version: digest, phase: 'upgrading', since: new Date(t0).toISOString() }),
  });
  const plan = planRollout(rollout, { nodes: [rolledBack] }, t0 + 1000);
  t.like(plan.actions[0], { type: 'mark-failed', record: { reason: 'RolledBack', message: 'E_CONFIG_ROLLED_BACK: check 10-ping failed' } });
});

test('the agent applies a desired configuration once, and not again after it was rolled back', (t) => {
  const asked = (extra: Record<string, string> = {}): NodeLike => ({ metadata: { annotations: { [configAnnotations.desired]: 'config-1', [configAnnotations.source]: 'tuning', ...extra } } });
  t.deepEqual(decideConfigAction(asked(), { currentVersion: '' }, false), { type: 'upgrade', version: 'config-1', channel: 'tuning', allowDowngrade: false });
  t.is(decideConfigAction(asked(), { currentVersion: 'config-1' }, false).type, 'none');
  t.is(decideConfigAction(asked(), { currentVersion: '' }, true).type, 'none', 'not while an upgrade or another apply runs');
  const declined = decideConfigAction(asked(), { currentVersion: '', state: 'fell-back', stateVersion: 'config-1' }, false);
  t.deepEqual(declined, { type: 'none', why: 'the last attempt at config-1 ended fell-back' });
  t.like(decideConfigAction({ metadata: { annotations: { [configAnnotations.desired]: 'config-1' } } }, { currentVersion: '' }, false), { type: 'none', why: `${configAnnotations.source} is not set` });
  t.like(decideConfigAction({ metadata: { annotations: {} } }, { currentVersion: '' }, false), { type: 'none', why: 'no desired configuration' });
});

test('the agent reports the configuration in its own annotations only', (t) => {
  const patch = agentConfigReportPatch({ state: 'committed', stateVersion: 'config-1', currentVersion: 'config-1' });
  t.deepEqual(patch, { metadata: { annotations: { [configAnnotations.state]: 'committed', [configAnnotations.lastError]: null, [configAnnotations.stateFor]: 'config-1', [configAnnotations.applied]: 'config-1' } } });
});
