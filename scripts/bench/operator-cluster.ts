/**
 * The operator against a REAL API server (scripts/kube/control-plane.ts): the time of one reconcile
 * pass with 1,000 and 10,000 Nodes held by kube-apiserver (created in bulk; no kubelet), against
 * the pure planner on the same cluster in memory; and the watch-to-action latency for one node
 * change, against the time the same watch takes to deliver a change at all.
 */
import { CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions, Watch, type V1Node } from '@kubernetes/client-node';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { KubeApi } from '../../runtime/fleet/kube-api.js';
import { readNodeView } from '../../runtime/fleet/node-protocol.js';
import { readRollout } from '../../runtime/fleet/osupgrade.js';
import { planRollout } from '../../runtime/operator/plan-rollout.js';
import { reconcileAll } from '../../runtime/operator/reconcile-rollout.js';
import { runOperator } from '../../runtime/operator/run-operator.js';
import { startControlPlane, type ControlPlane } from '../kube/control-plane.js';
import { row, type Bench, type BenchRow } from './measure.js';

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
const osupgrades = { group: 'kubeos.io', version: 'v1alpha1', plural: 'osupgrades' };

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** Nodes numbered from `from`, created 32 at a time, Ready for an hour, on 1.0.0. */
async function createNodes(core: CoreV1Api, from: number, to: number): Promise<void> {
  let next = from;
  const since = new Date(Date.now() - 3_600_000);
  const worker = async () => {
    while (next < to) {
      const i = next++;
      const body: V1Node = {
        metadata: { name: `node-${String(i).padStart(5, '0')}`, labels: { pool: 'workers', 'kubeos.io/version': '1.0.0' }, annotations: { 'kubeos.io/current-version': '1.0.0' } },
        status: { conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'bench', lastTransitionTime: since, lastHeartbeatTime: since }] },
      };
      await core.createNode({ body });
    }
  };
  await Promise.all(Array.from({ length: 32 }, worker));
}

async function operatorKubeconfig(plane: ControlPlane): Promise<string> {
  await plane.kubectlOk(['apply', '-k', 'deploy/']);
  await plane.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/osupgrades.kubeos.io']);
  return plane.serviceAccountKubeconfig('kubeos-system', 'kubeos-operator');
}

/** Passes after the first (which cordons the first nodes) find nothing new to do: the steady state. */
async function reconcilePasses(plane: ControlPlane, kubeconfig: string, count: number): Promise<BenchRow> {
  const api = KubeApi.connect({ kubeconfig }, 'bench');
  const times: number[] = [];
  for (let i = 0; i < 6; i++) {
    const started = performance.now();
    await reconcileAll({ api, now: Date.now });
    times.push(performance.now() - started);
  }
  const pass = median(times.slice(1));
  const custom = plane.admin.makeApiClient(CustomObjectsApi);
  const object = await custom.getClusterCustomObject({ ...osupgrades, name: 'bench' });
  const views = (await plane.admin.makeApiClient(CoreV1Api).listNode()).items.map(readNodeView);
  const rollout = readRollout(object as Parameters<typeof readRollout>[0]);
  const planner: number[] = [];
  for (let i = 0; i < 6; i++) {
    const started = performance.now();
    planRollout(rollout, { nodes: views }, Date.now());
    planner.push(performance.now() - started);
  }
  return row(`operator: one reconcile pass, ${count.toLocaleString('en')} Nodes in a real kube-apiserver`, 'the pure planner on the same nodes in memory', pass, median(planner.slice(1)), 'ms',
    'median of 5 steady-state passes: list OSUpgrades and Nodes, plan, write status');
}

/** From an admin's patch of one node to the operator's cordon of it, against the watch's own delivery time. */
async function watchToAction(plane: ControlPlane, kubeconfig: string): Promise<BenchRow> {
  const core = plane.admin.makeApiClient(CoreV1Api);
  const custom = plane.admin.makeApiClient(CustomObjectsApi);
  await core.createNode({ body: { metadata: { name: 'latency', labels: { pool: 'latency' } }, spec: { unschedulable: true }, status: { conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: new Date(Date.now() - 3_600_000) }] } } });
  await custom.createClusterCustomObject({ ...osupgrades, body: { apiVersion: 'kubeos.io/v1alpha1', kind: 'OSUpgrade', metadata: { name: 'latency' }, spec: { version: '2.0.0', nodeSelector: { pool: 'latency' } } } });

  // the watch everybody's latency is built on: how long a change takes to come back to a watcher
  const seen = new Map<string, (at: number) => void>();
  const watch = await new Watch(plane.admin).watch('/api/v1/nodes', { fieldSelector: 'metadata.name=latency' }, (_type: string, node: V1Node) => {
    const marker = node.metadata?.annotations?.['bench/marker'];
    const cordoned = node.metadata?.annotations?.['kubeos.io/rollout'] !== undefined;
    if (marker !== undefined) seen.get(`marker ${marker}`)?.(performance.now());
    if (cordoned) seen.get('cordoned')?.(performance.now());
  }, () => {});
  const deliveries: number[] = [];
  for (let i = 0; i < 5; i++) {
    const arrived = new Promise<number>((resolve) => seen.set(`marker ${i}`, resolve));
    const started = performance.now();
    await core.patchNode({ name: 'latency', body: { metadata: { annotations: { 'bench/marker': String(i) } } } }, mergePatch);
    deliveries.push((await arrived) - started);
  }

  const abort = new AbortController();
  let settled!: () => void;
  const firstPass = new Promise<void>((resolve) => (settled = resolve));
  const operator = runOperator({
    api: KubeApi.connect({ kubeconfig }, 'bench-operator'), namespace: 'kubeos-system', leaseName: 'kubeos-operator', identity: 'bench', intervalMs: 60_000, signal: abort.signal,
    // a pass with nothing to write: the operator leads, its watches are open, the cordoned node is no candidate
    onEvent: (event) => {
      if (event.type === 'reconciled' && event.reports.every((r) => r.applied === 0)) settled();
    },
  });
  await firstPass;
  const cordoned = new Promise<number>((resolve) => seen.set('cordoned', resolve));
  const started = performance.now();
  await core.patchNode({ name: 'latency', body: { spec: { unschedulable: null } } }, mergePatch); // a person uncordons it
  const acted = (await cordoned) - started;
  abort.abort();
  await operator;
  watch.abort();
  return row('operator: watch-to-action latency, one node uncordoned to its cordon for the rollout', 'a watch delivering a node change (median of 5)', acted, median(deliveries), 'ms',
    'includes the operator\'s 500 ms debounce of watch bursts');
}

export const bench: Bench = async () => {
  const rows: BenchRow[] = [];
  const plane = await startControlPlane();
  try {
    const kubeconfig = await operatorKubeconfig(plane);
    const core = plane.admin.makeApiClient(CoreV1Api);
    const custom = plane.admin.makeApiClient(CustomObjectsApi);
    await custom.createClusterCustomObject({ ...osupgrades, body: { apiVersion: 'kubeos.io/v1alpha1', kind: 'OSUpgrade', metadata: { name: 'bench' }, spec: { version: '2.0.0', maxUnavailable: 50, nodeSelector: { pool: 'workers' } } } });
    await createNodes(core, 0, 1000);
    rows.push(await reconcilePasses(plane, kubeconfig, 1000));
    await createNodes(core, 1000, 10_000);
    rows.push(await reconcilePasses(plane, kubeconfig, 10_000));
    await custom.deleteClusterCustomObject({ ...osupgrades, name: 'bench' });
    rows.push(await watchToAction(plane, kubeconfig));
  } catch (error) {
    await writeFile(join(plane.dir, 'bench-error.txt'), String(error)).catch(() => {});
    throw error;
  } finally {
    await plane.stop();
  }
  return rows;
};
