/**
 * The one runtime file that talks to the Kubernetes API (@kubernetes/client-node), shared by the
 * operator and the node agent (runtime/fleet is their contract); the rest deals in plain objects
 * and patches. API failures become E_KUBERNETES here,
 * with the HTTP status and the Status reason in `details`.
 */
import {
  CoordinationV1Api,
  CoreV1Api,
  CustomObjectsApi,
  KubeConfig,
  PatchStrategy,
  V1MicroTime,
  Watch,
  setHeaderOptions,
  type V1Lease,
} from '@kubernetes/client-node';
import { existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { delimiter, join } from 'node:path';
import { KubeosError } from '../core/errors.js';
import { toMs, type NodeLike, type NodePatch, type PodLike } from './node-protocol.js';
import { osConfigApi, type OSConfigObject } from './osconfig.js';
import { osUpgradeApi, type OSUpgradeObject, type OSUpgradeStatus } from './osupgrade.js';

export interface KubeConfigSource {
  /** A kubeconfig file; without it, in-cluster config, then $KUBECONFIG, then ~/.kube/config. */
  kubeconfig?: string;
  context?: string;
}

export interface LeaseRecord {
  holder: string | undefined;
  /** ms since the epoch */
  renewTime: number | undefined;
  acquireTime: number | undefined;
  durationSeconds: number;
  transitions: number;
  resourceVersion: string | undefined;
}

export type EvictionResult =
  | { outcome: 'evicted' }
  | { outcome: 'gone' }
  | { outcome: 'blocked'; status: number; message: string; retryAfterSeconds: number | undefined };

export interface EventInput {
  kind: 'Node' | 'OSUpgrade' | 'OSConfig';
  name: string;
  /** The object's uid: `kubectl describe` shows only events whose involvedObject carries it. */
  uid: string | undefined;
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
}

export type WatchEvent = { type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR'; object: unknown };

const eventNamespace = 'default';
const mergePatch = setHeaderOptions('Content-Type', PatchStrategy.MergePatch);

function statusOf(error: unknown): number | undefined {
  const e = error as { code?: unknown; statusCode?: unknown };
  if (typeof e.code === 'number') return e.code;
  if (typeof e.statusCode === 'number') return e.statusCode;
  return undefined;
}

function bodyMessage(error: unknown): string {
  const body = (error as { body?: unknown }).body;
  if (typeof body === 'string') {
    try {
      const parsed = JSON.parse(body) as { message?: unknown };
      if (typeof parsed.message === 'string') return parsed.message;
    } catch {
      return body.slice(0, 300);
    }
  }
  if (typeof body === 'object' && body !== null && typeof (body as { message?: unknown }).message === 'string') return (body as { message: string }).message;
  return error instanceof Error ? error.message.split('\n')[0] ?? '' : String(error);
}

/**
 * Why an eviction was refused, naming the PodDisruptionBudget: the API server puts "The disruption
 * budget NAME needs N healthy pods and has M currently" in the Status's causes.
 */
function evictionRefusal(namespace: string, error: unknown): string {
  const body = (error as { body?: unknown }).body;
  let parsed: { message?: unknown; details?: { causes?: Array<{ reason?: unknown; message?: unknown }> } } | undefined;
  try {
    parsed = typeof body === 'string' ? JSON.parse(body) as typeof parsed : typeof body === 'object' && body !== null ? body as typeof parsed : undefined;
  } catch {
    parsed = undefined;
  }
  const cause = parsed?.details?.causes?.find((c) => c.reason === 'DisruptionBudget' && typeof c.message === 'string');
  const match = typeof cause?.message === 'string' ? /^The disruption budget (\S+) (.*)$/.exec(cause.message) : null;
  if (match !== null) return `PodDisruptionBudget ${namespace}/${match[1]} ${match[2]}`;
  return typeof cause?.message === 'string' ? cause.message : bodyMessage(error);
}

function kubeError(what: string, error: unknown): KubeosError {
  const status = statusOf(error);
  const message = bodyMessage(error);
  return new KubeosError('E_KUBERNETES', `${what} failed${status === undefined ? '' : ` (HTTP ${status})`}: ${message}`, {
    cause: error,
    hint: status === 403 ? 'the service account lacks a permission: compare with deploy/operator-rbac.yaml' : status === undefined ? 'is the API server reachable? check --kubeconfig' : undefined,
    details: { status, message },
  });
}


/** Where client-node would look for credentials, in its order; the first that exists wins. */
function findKubeconfig(): { kind: 'in-cluster' } | { kind: 'files'; files: string[] } | undefined {
  const env = process.env['KUBECONFIG'];
  if (env !== undefined && env !== '') {
    const files = env.split(delimiter).filter((f) => f !== '' && existsSync(f));
    return files.length > 0 ? { kind: 'files', files } : undefined;
  }
  const home = join(homedir(), '.kube', 'config');
  if (existsSync(home)) return { kind: 'files', files: [home] };
  if (process.env['KUBERNETES_SERVICE_HOST'] !== undefined && existsSync(serviceAccountTokenFile)) return { kind: 'in-cluster' };
  return undefined;
}

const serviceAccountTokenFile = '/var/run/secrets/kubernetes.io/serviceaccount/token';

export function loadKubeConfig(source: KubeConfigSource): KubeConfig {
  const kc = new KubeConfig();
  if (source.kubeconfig !== undefined && !existsSync(source.kubeconfig)) {
    throw new KubeosError('E_KUBECONFIG_MISSING', `--kubeconfig ${source.kubeconfig}: no such file`, {
      hint: 'pass the path of an existing kubeconfig (kubectl config view --raw > FILE writes one)',
      details: { kubeconfig: source.kubeconfig },
    });
  }
  const found = source.kubeconfig === undefined ? findKubeconfig() : { kind: 'files' as const, files: [source.kubeconfig] };
  if (found === undefined) {
    const env = process.env['KUBECONFIG'];
    throw new KubeosError('E_KUBECONFIG_MISSING', env ? `no kubeconfig: none of the files in $KUBECONFIG (${env}) exists` : `no kubeconfig: --kubeconfig not given, $KUBECONFIG not set, ${join(homedir(), '.kube', 'config')} missing, and not running in a pod`, {
      hint: 'pass --kubeconfig FILE, set KUBECONFIG, or run in a pod with a service account',
    });
  }
  try {
    if (found.kind === 'in-cluster') kc.loadFromCluster();
    else if (found.files.length === 1) kc.loadFromFile(found.files[0]!);
    else kc.loadFromDefault();
    if (source.context !== undefined) kc.setCurrentContext(source.context);
  } catch (error) {
    const where = found.kind === 'in-cluster' ? 'the in-cluster service account' : found.files.join(', ');
    throw new KubeosError('E_KUBERNETES', `cannot load the kubeconfig ${where}: ${error instanceof Error ? error.message : String(error)}`, {
      cause: error,
      hint: 'check the file with: kubectl config view --kubeconfig FILE',
    });
  }
  if (kc.getCurrentCluster() === null) {
    throw new KubeosError('E_KUBERNETES', 'the kubeconfig names no current cluster', { hint: 'pass --kubeconfig FILE or --context NAME' });
  }
  return kc;
}

export class KubeApi {
  private readonly core: CoreV1Api;
  private readonly coordination: CoordinationV1Api;
  private readonly custom: CustomObjectsApi;
  private readonly watcher: Watch;

  constructor(
    kubeConfig: KubeConfig,
    /** Sent as fieldManager on every write, so the API server (and its audit log) knows who wrote. */
    private readonly fieldManager: string,
  ) {
    this.core = kubeConfig.makeApiClient(CoreV1Api);
    this.coordination = kubeConfig.makeApiClient(CoordinationV1Api);
    this.custom = kubeConfig.makeApiClient(CustomObjectsApi);
    this.watcher = new Watch(kubeConfig);
  }

  static connect(source: KubeConfigSource, fieldManager: string): KubeApi {
    return new KubeApi(loadKubeConfig(source), fieldManager);
  }

  async listNodes(): Promise<NodeLike[]> {
    try {
      return (await this.core.listNode()).items;
    } catch (error) {
      throw kubeError('listing nodes', error);
    }
  }

  async readNode(name: string): Promise<NodeLike> {
    try {
      return await this.core.readNode({ name });
    } catch (error) {
      throw kubeError(`reading node ${name}`, error);
    }
  }

  async patchNode(name: string, patch: NodePatch): Promise<NodeLike> {
    try {
      return await this.core.patchNode({ name, body: patch, fieldManager: this.fieldManager }, mergePatch);
    } catch (error) {
      throw kubeError(`patching node ${name}`, error);
    }
  }

  async listPodsOnNode(node: string): Promise<PodLike[]> {
    try {
      return (await this.core.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}` })).items;
    } catch (error) {
      throw kubeError(`listing pods on node ${node}`, error);
    }
  }

  /** One eviction attempt. 429 (a PodDisruptionBudget says no) is an outcome, not an error. */
  async evictPod(namespace: string, name: string): Promise<EvictionResult> {
    try {
      await this.core.createNamespacedPodEviction({
        name,
        namespace,
        fieldManager: this.fieldManager,
        body: { apiVersion: 'policy/v1', kind: 'Eviction', metadata: { name, namespace } },
      });
      return { outcome: 'evicted' };
    } catch (error) {
      const status = statusOf(error);
      if (status === 404) return { outcome: 'gone' };
      if (status === 429 || status === 500) {
        // 500 is what the API server answers when several PDBs match the pod: also "not now".
        const headers = (error as { headers?: Record<string, string> }).headers ?? {};
        const retry = Number.parseInt(headers['retry-after'] ?? '', 10);
        return { outcome: 'blocked', status, message: evictionRefusal(namespace, error), retryAfterSeconds: Number.isNaN(retry) ? undefined : retry };
      }
      throw kubeError(`evicting pod ${namespace}/${name}`, error);
    }
  }

  async recordEvent(event: EventInput, component: string, now: number): Promise<void> {
    const at = new Date(now);
    const custom = event.kind === 'OSConfig' ? osConfigApi : osUpgradeApi;
    const involved = event.kind === 'Node'
      ? { apiVersion: 'v1', kind: 'Node', name: event.name, uid: event.uid }
      : { apiVersion: `${custom.group}/${custom.version}`, kind: custom.kind, name: event.name, uid: event.uid };
    try {
      await this.core.createNamespacedEvent({
        namespace: eventNamespace,
        fieldManager: this.fieldManager,
        body: {
          metadata: { generateName: `${event.name}.`, namespace: eventNamespace },
          involvedObject: involved,
          type: event.type,
          reason: event.reason,
          message: event.message,
          source: { component },
          reportingComponent: component,
          reportingInstance: this.fieldManager,
          firstTimestamp: at,
          lastTimestamp: at,
          count: 1,
        },
      });
    } catch (error) {
      throw kubeError(`recording event ${event.reason} on ${event.kind} ${event.name}`, error);
    }
  }

  async readLease(namespace: string, name: string): Promise<LeaseRecord | undefined> {
    try {
      return leaseRecord(await this.coordination.readNamespacedLease({ namespace, name }));
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw kubeError(`reading lease ${namespace}/${name}`, error);
    }
  }

  /**
   * Creates the lease, or replaces it if `expected` still is its resourceVersion.
   * Returns false when someone else wrote it first (409), which is how two replicas never both win.
   */
  async writeLease(namespace: string, name: string, lease: Omit<LeaseRecord, 'resourceVersion'>, expected: string | undefined): Promise<boolean> {
    const body: V1Lease = {
      apiVersion: 'coordination.k8s.io/v1',
      kind: 'Lease',
      metadata: { name, namespace, ...(expected === undefined ? {} : { resourceVersion: expected }) },
      spec: {
        holderIdentity: lease.holder,
        leaseDurationSeconds: lease.durationSeconds,
        leaseTransitions: lease.transitions,
        ...(lease.acquireTime === undefined ? {} : { acquireTime: new V1MicroTime(lease.acquireTime) }),
        ...(lease.renewTime === undefined ? {} : { renewTime: new V1MicroTime(lease.renewTime) }),
      },
    };
    try {
      if (expected === undefined) await this.coordination.createNamespacedLease({ namespace, body, fieldManager: this.fieldManager });
      else await this.coordination.replaceNamespacedLease({ namespace, name, body, fieldManager: this.fieldManager });
      return true;
    } catch (error) {
      const status = statusOf(error);
      if (status === 409 || (expected === undefined && status === 422)) return false;
      throw kubeError(`writing lease ${namespace}/${name}`, error);
    }
  }

  async listOSUpgrades(): Promise<OSUpgradeObject[]> {
    return this.listCustom(osUpgradeApi) as Promise<OSUpgradeObject[]>;
  }

  async readOSUpgrade(name: string): Promise<OSUpgradeObject> {
    return this.readCustom(osUpgradeApi, name, 'E_OSUPGRADE_NOT_FOUND') as Promise<OSUpgradeObject>;
  }

  /** Merge-patches the OSUpgrade itself (spec.paused and the operator's annotations). */
  async patchOSUpgrade(name: string, patch: Record<string, unknown>): Promise<void> {
    await this.patchCustom(osUpgradeApi, name, patch);
  }

  async patchOSUpgradeStatus(name: string, status: OSUpgradeStatus): Promise<void> {
    await this.patchCustom(osUpgradeApi, name, { status }, true);
  }

  /** The OSConfigs; none when their CRD is not installed (a cluster that only upgrades). */
  async listOSConfigs(): Promise<OSConfigObject[]> {
    return this.listCustom(osConfigApi, true) as Promise<OSConfigObject[]>;
  }

  async readOSConfig(name: string): Promise<OSConfigObject> {
    return this.readCustom(osConfigApi, name, 'E_OSCONFIG_NOT_FOUND') as Promise<OSConfigObject>;
  }

  async patchOSConfig(name: string, patch: Record<string, unknown>): Promise<void> {
    await this.patchCustom(osConfigApi, name, patch);
  }

  async patchOSConfigStatus(name: string, status: OSUpgradeStatus): Promise<void> {
    await this.patchCustom(osConfigApi, name, { status }, true);
  }

  private async listCustom(api: CustomApi, absentIsEmpty = false): Promise<unknown[]> {
    try {
      const list = (await this.custom.listClusterCustomObject({ group: api.group, version: api.version, plural: api.plural })) as { items?: unknown[] };
      return list.items ?? [];
    } catch (error) {
      if (absentIsEmpty && statusOf(error) === 404) return [];
      throw kubeError(`listing ${api.kind}s`, error);
    }
  }

  private async readCustom(api: CustomApi, name: string, notFound: 'E_OSUPGRADE_NOT_FOUND' | 'E_OSCONFIG_NOT_FOUND'): Promise<unknown> {
    try {
      return await this.custom.getClusterCustomObject({ group: api.group, version: api.version, plural: api.plural, name });
    } catch (error) {
      if (statusOf(error) === 404) {
        throw new KubeosError(notFound, `${api.kind} ${name} not found`, { cause: error, hint: `kubectl get ${api.plural} lists them` });
      }
      throw kubeError(`reading ${api.kind} ${name}`, error);
    }
  }

  private async patchCustom(api: CustomApi, name: string, body: Record<string, unknown>, status = false): Promise<void> {
    const request = { group: api.group, version: api.version, plural: api.plural, name, body, fieldManager: this.fieldManager };
    try {
      if (status) await this.custom.patchClusterCustomObjectStatus(request, mergePatch);
      else await this.custom.patchClusterCustomObject(request, mergePatch);
    } catch (error) {
      throw kubeError(`${status ? 'updating the status of' : 'patching'} ${api.kind} ${name}`, error);
    }
  }

  /**
   * Streams changes to nodes (one node with `name`) or OSUpgrades until the signal aborts or the
   * server ends the watch; `onEnd` then says why (undefined: closed normally).
   */
  async watch(what: { kind: 'nodes' | 'osupgrades' | 'osconfigs'; name?: string; resourceVersion?: string }, onEvent: (event: WatchEvent) => void, onEnd: (error: unknown) => void, signal: AbortSignal): Promise<void> {
    const custom = what.kind === 'osconfigs' ? osConfigApi : osUpgradeApi;
    const path = what.kind === 'nodes' ? '/api/v1/nodes' : `/apis/${custom.group}/${custom.version}/${custom.plural}`;
    const query: Record<string, string> = {};
    if (what.name !== undefined) query['fieldSelector'] = `metadata.name=${what.name}`;
    // from the version a read returned: every change after that read is delivered, none falls in between
    if (what.resourceVersion !== undefined) query['resourceVersion'] = what.resourceVersion;
    let ended = false;
    let controller: AbortController | undefined;
    const abort = () => controller?.abort();
    const end = (error: unknown) => {
      if (ended) return;
      ended = true;
      signal.removeEventListener('abort', abort);
      onEnd(error === null ? undefined : error);
    };
    controller = await this.watcher.watch(path, query, (type, object) => onEvent({ type: type as WatchEvent['type'], object }), end);
    if (signal.aborted) controller.abort();
    else if (!ended) signal.addEventListener('abort', abort, { once: true });
  }
}

interface CustomApi {
  group: string;
  version: string;
  plural: string;
  kind: string;
}

function leaseRecord(lease: V1Lease): LeaseRecord {
  return {
    holder: lease.spec?.holderIdentity,
    renewTime: toMs(lease.spec?.renewTime),
    acquireTime: toMs(lease.spec?.acquireTime),
    durationSeconds: lease.spec?.leaseDurationSeconds ?? 15,
    transitions: lease.spec?.leaseTransitions ?? 0,
    resourceVersion: lease.metadata?.resourceVersion,
  };
}
