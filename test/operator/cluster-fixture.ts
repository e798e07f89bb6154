/**
 * The operator's test cluster: a real control plane (test/helpers/control-plane.ts) with
 * `kubectl apply -k deploy/` applied, the operator's service-account credentials, and helpers that
 * play the parts a test cluster lacks: a person with kubectl (nodes, pods, OSUpgrades), and the
 * kubelet's STAND-IN (a Node's Ready condition and a pod's readiness, patched on the status
 * subresource, since no kubelet runs here).
 */
import { readFile } from 'node:fs/promises';
import { AppsV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi, PatchStrategy, setHeaderOptions, type V1Pod } from '@kubernetes/client-node';
import { ClusterMirror } from '../helpers/cluster-mirror.js';
import { startControlPlane, type ControlPlane } from '../../scripts/kube/control-plane.js';

const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);
export const systemNamespace = 'kubeos-system';
const osupgrades = { group: 'kubeos.io', version: 'v1alpha1', plural: 'osupgrades' };
const osconfigs = { group: 'kubeos.io', version: 'v1alpha1', plural: 'osconfigs' };

export interface PodOptions {
  /** A controller of this kind owns the pod (a real object of that kind is created for it). */
  ownerKind?: 'ReplicaSet' | 'StatefulSet' | 'DaemonSet';
  mirror?: boolean;
  emptyDir?: boolean;
}

export class OperatorCluster {
  readonly core: CoreV1Api;
  readonly apps: AppsV1Api;
  readonly custom: CustomObjectsApi;
  readonly coordination: CoordinationV1Api;
  readonly mirror: ClusterMirror;
  operatorKubeconfig = '';
  private readonly namespaces = new Set<string>();

  private constructor(readonly plane: ControlPlane) {
    this.core = plane.admin.makeApiClient(CoreV1Api);
    this.apps = plane.admin.makeApiClient(AppsV1Api);
    this.custom = plane.admin.makeApiClient(CustomObjectsApi);
    this.coordination = plane.admin.makeApiClient(CoordinationV1Api);
    this.mirror = new ClusterMirror(plane.admin, ['nodes', 'pods', 'events', 'leases', 'osupgrades', 'osconfigs', 'pdbs']);
  }

  /** The controller-manager keeps PodDisruptionBudget status; files that need none skip it. */
  static async start(options: { controllerManager?: boolean; servingAddresses?: string[] } = {}): Promise<OperatorCluster> {
    const plane = await startControlPlane({ controllerManager: options.controllerManager ?? true, servingAddresses: options.servingAddresses });
    try {
      const cluster = new OperatorCluster(plane);
      await plane.kubectlOk(['apply', '-k', 'deploy/']);
      // kubectl wait fails at once on a CRD so new it has no status.conditions yet: ask again until it has
      for (let attempt = 1; ; attempt++) {
        try {
          await plane.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/osupgrades.kubeos.io', 'crd/osconfigs.kubeos.io']);
          break;
        } catch (error) {
          if (attempt === 20 || !/status\.conditions accessor error/.test(String(error))) throw error;
        }
      }
      cluster.operatorKubeconfig = await plane.serviceAccountKubeconfig(systemNamespace, 'kubeos-operator');
      await cluster.mirror.start();
      return cluster;
    } catch (error) {
      await plane.stop();
      throw error;
    }
  }

  async stop(): Promise<void> {
    this.mirror.stop();
    await this.plane.stop();
  }

  async addNode(name: string, labels: Record<string, string> = {}): Promise<void> {
    await this.core.createNode({ body: { metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels } } } });
    await this.setNodeReady(name, true, Date.now() - 3_600_000);
  }

  /** The kubelet's stand-in: the Ready condition, with a new lastTransitionTime when it flips. */
  async setNodeReady(name: string, ready: boolean, since = Date.now()): Promise<void> {
    const at = new Date(since).toISOString();
    await this.core.patchNodeStatus({
      name,
      body: { status: { conditions: [{ type: 'Ready', status: ready ? 'True' : 'False', reason: ready ? 'KubeletReady' : 'KubeletNotReady', message: 'set by the test (kubelet stand-in)', lastHeartbeatTime: at, lastTransitionTime: at }] } },
    }, mergePatch);
  }

  async ensureNamespace(namespace: string): Promise<void> {
    if (this.namespaces.has(namespace)) return;
    await this.core.createNamespace({ body: { metadata: { name: namespace } } }).catch(ignoreConflict);
    // the serviceaccount controller creates it too; pods cannot be admitted before it exists
    await this.core.createNamespacedServiceAccount({ namespace, body: { metadata: { name: 'default' } } }).catch(ignoreConflict);
    this.namespaces.add(namespace);
  }

  /**
   * A pod bound to `node`, running and Ready (the kubelet stand-in sets its status). Its grace period
   * is 0 so that an eviction removes it at once: with no kubelet, a graceful delete would wait forever.
   */
  async addPod(namespace: string, name: string, node: string, options: PodOptions = {}): Promise<V1Pod> {
    await this.ensureNamespace(namespace);
    let ownerReferences;
    if (options.ownerKind !== undefined) {
      const owner = await this.createOwner(namespace, `${name}-owner`, options.ownerKind);
      ownerReferences = [{ apiVersion: 'apps/v1', kind: options.ownerKind, name: `${name}-owner`, uid: owner, controller: true, blockOwnerDeletion: false }];
    }
    const labels = { app: name };
    const pod = await this.core.createNamespacedPod({
      namespace,
      body: {
        metadata: {
          name,
          namespace,
          labels,
          ...(options.mirror ? { annotations: { 'kubernetes.io/config.mirror': 'test', 'kubernetes.io/config.source': 'file' } } : {}),
          ...(ownerReferences === undefined ? {} : { ownerReferences }),
        },
        spec: {
          nodeName: node,
          terminationGracePeriodSeconds: 0,
          automountServiceAccountToken: false,
          containers: [{ name: 'c', image: 'registry.invalid/test:1' }],
          volumes: options.emptyDir ? [{ name: 'scratch', emptyDir: {} }] : [],
        },
      },
    });
    const at = new Date().toISOString();
    await this.core.patchNamespacedPodStatus({
      namespace,
      name,
      body: { status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: at }] } },
    }, mergePatch);
    return pod;
  }

  private async createOwner(namespace: string, name: string, kind: NonNullable<PodOptions['ownerKind']>): Promise<string> {
    const selector = { matchLabels: { owner: name } };
    const template = { metadata: { labels: { owner: name } }, spec: { containers: [{ name: 'c', image: 'registry.invalid/test:1' }] } };
    const metadata = { name, namespace };
    // no workload controllers run in the test cluster: these objects only own their pods
    const created = kind === 'ReplicaSet'
      ? await this.apps.createNamespacedReplicaSet({ namespace, body: { metadata, spec: { replicas: 0, selector, template } } })
      : kind === 'StatefulSet'
        ? await this.apps.createNamespacedStatefulSet({ namespace, body: { metadata, spec: { replicas: 0, selector, template, serviceName: name } } })
        : await this.apps.createNamespacedDaemonSet({ namespace, body: { metadata, spec: { selector, template } } });
    return created.metadata!.uid!;
  }

  async addOSUpgrade(name: string, spec: Record<string, unknown>): Promise<void> {
    await this.custom.createClusterCustomObject({ ...osupgrades, body: { apiVersion: 'kubeos.io/v1alpha1', kind: 'OSUpgrade', metadata: { name }, spec } });
  }

  async addOSConfig(name: string, spec: Record<string, unknown>): Promise<void> {
    await this.custom.createClusterCustomObject({ ...osconfigs, body: { apiVersion: 'kubeos.io/v1alpha1', kind: 'OSConfig', metadata: { name }, spec } });
  }

  async patchOSConfig(name: string, patch: Record<string, unknown>): Promise<void> {
    await this.custom.patchClusterCustomObject({ ...osconfigs, name, body: patch }, mergePatch);
  }

  /** kubectl patch --type=merge, as a person would. */
  async patchOSUpgrade(name: string, patch: Record<string, unknown>): Promise<void> {
    await this.custom.patchClusterCustomObject({ ...osupgrades, name, body: patch }, mergePatch);
  }

  async patchNode(name: string, patch: Record<string, unknown>): Promise<void> {
    await this.core.patchNode({ name, body: patch }, mergePatch);
  }

  /**
   * The agent's pod on `node`, as the DaemonSet controller would create it (owned by the DaemonSet
   * deploy/ installs), and a kubeconfig with a token bound to that pod, and so to the node.
   */
  async addAgent(node: string, options: { server?: string } = {}): Promise<string> {
    const daemonSet = await this.apps.readNamespacedDaemonSet({ namespace: systemNamespace, name: 'kubeos-agent' });
    const name = `kubeos-agent-${node}`;
    await this.core.createNamespacedPod({
      namespace: systemNamespace,
      body: {
        metadata: { name, ownerReferences: [{ apiVersion: 'apps/v1', kind: 'DaemonSet', name: 'kubeos-agent', uid: daemonSet.metadata!.uid!, controller: true }] },
        spec: { nodeName: node, serviceAccountName: 'kubeos-agent', terminationGracePeriodSeconds: 0, containers: [{ name: 'agent', image: 'registry.invalid/kubeos:test' }] },
      },
    });
    return this.plane.serviceAccountKubeconfig(systemNamespace, 'kubeos-agent', { boundPod: { namespace: systemNamespace, name }, ...options });
  }

  /** The operator's service account again, talking to `server` (a proxy in front of the API server). */
  operatorKubeconfigVia(server: string): Promise<string> {
    return this.plane.serviceAccountKubeconfig(systemNamespace, 'kubeos-operator', { server });
  }

  /** Writes status as the operator would (the status subresource). */
  async patchOSUpgradeStatus(name: string, status: unknown): Promise<void> {
    await this.custom.patchClusterCustomObjectStatus({ ...osupgrades, name, body: { status } }, mergePatch);
  }

  /** Audit log entries (JSON lines, every request with its user, verb and response code). */
  async audit(): Promise<Array<Record<string, any>>> {
    const text = await readFile(this.plane.auditLog, 'utf8');
    return text.split('\n').filter(Boolean).map((line) => JSON.parse(line) as Record<string, any>);
  }

  osupgrade(name: string): Record<string, any> {
    const object = this.mirror.get('osupgrades', name);
    if (object === undefined) throw new Error(`OSUpgrade ${name} is not in the cluster`);
    return object;
  }

  /** Field managers that wrote to the node (its managedFields), e.g. the operator identities. */
  managers(node: string): string[] {
    return (this.mirror.node(node)['metadata'].managedFields ?? []).map((f: { manager?: string }) => f.manager ?? '');
  }

  /** Removes what one test created, so the next test in the file starts from an empty fleet. */
  async reset(): Promise<void> {
    for (const o of this.mirror.list('osupgrades')) await this.custom.deleteClusterCustomObject({ ...osupgrades, name: o['metadata'].name }).catch(ignoreMissing);
    for (const o of this.mirror.list('osconfigs')) await this.custom.deleteClusterCustomObject({ ...osconfigs, name: o['metadata'].name }).catch(ignoreMissing);
    for (const n of this.mirror.list('nodes')) await this.core.deleteNode({ name: n['metadata'].name }).catch(ignoreMissing);
    for (const ns of this.namespaces) {
      await this.core.deleteCollectionNamespacedPod({ namespace: ns, gracePeriodSeconds: 0 }).catch(ignoreMissing);
      await this.plane.kubectlOk(['delete', 'replicasets,statefulsets,daemonsets', '--all', '-n', ns, '--cascade=orphan', '--ignore-not-found']);
    }
    for (const p of this.mirror.list('pods').filter((p) => p['metadata'].namespace === systemNamespace)) {
      await this.core.deleteNamespacedPod({ namespace: systemNamespace, name: p['metadata'].name, gracePeriodSeconds: 0 }).catch(ignoreMissing);
    }
    for (const pdb of this.mirror.list('pdbs')) {
      await this.plane.kubectlOk(['delete', 'pdb', '-n', pdb['metadata'].namespace, pdb['metadata'].name, '--ignore-not-found']);
    }
    await this.coordination.deleteNamespacedLease({ namespace: systemNamespace, name: 'kubeos-operator' }).catch(ignoreMissing);
    await this.mirror.waitFor('the test fleet to be gone', () =>
      this.mirror.list('nodes').length === 0 && this.mirror.list('osupgrades').length === 0 && this.mirror.list('osconfigs').length === 0 && this.mirror.list('leases').every((l) => l['metadata'].name !== 'kubeos-operator'));
  }
}

function codeOf(error: unknown): number | undefined {
  const e = error as { code?: unknown };
  return typeof e.code === 'number' ? e.code : undefined;
}

function ignoreConflict(error: unknown): void {
  if (codeOf(error) !== 409) throw error;
}

function ignoreMissing(error: unknown): void {
  if (codeOf(error) !== 404) throw error;
}
