/**
 * What the cluster holds, mirrored by watches on a real API server, so tests wait on the cluster's
 * own change notifications (never on timers): `waitFor` checks its predicate after every watch
 * event. Read with the admin's credentials, so what a test sees is the API server's truth.
 */
import { EventEmitter } from 'node:events';
import { Watch, type KubeConfig } from '@kubernetes/client-node';

type Obj = Record<string, any>;

export const mirroredKinds = {
  nodes: '/api/v1/nodes',
  pods: '/api/v1/pods',
  events: '/api/v1/events',
  leases: '/apis/coordination.k8s.io/v1/leases',
  osupgrades: '/apis/kubeos.io/v1alpha1/osupgrades',
  osconfigs: '/apis/kubeos.io/v1alpha1/osconfigs',
  pdbs: '/apis/policy/v1/poddisruptionbudgets',
} as const;
export type MirroredKind = keyof typeof mirroredKinds;

function keyOf(object: Obj): string {
  const meta = object['metadata'] ?? {};
  return meta.namespace ? `${meta.namespace}/${meta.name}` : String(meta.name);
}

export class ClusterMirror {
  readonly activity = new EventEmitter();
  private readonly stores = new Map<MirroredKind, Map<string, Obj>>();
  private readonly aborts: AbortController[] = [];
  private stopped = false;

  constructor(private readonly kubeConfig: KubeConfig, private readonly kinds: readonly MirroredKind[]) {
    this.activity.setMaxListeners(100);
  }

  /** Resolves once every watch has delivered the objects that existed when it started. */
  async start(): Promise<void> {
    await Promise.all(this.kinds.map((kind) => this.watch(kind)));
  }

  private async watch(kind: MirroredKind): Promise<void> {
    const store = new Map<string, Obj>();
    this.stores.set(kind, store);
    // sendInitialEvents: the server sends every existing object, then a bookmark marking the end
    let synced!: () => void;
    const initial = new Promise<void>((resolve) => (synced = resolve));
    const open = async (): Promise<void> => {
      if (this.stopped) return;
      const controller = await new Watch(this.kubeConfig).watch(
        mirroredKinds[kind],
        { sendInitialEvents: true, allowWatchBookmarks: true, resourceVersionMatch: 'NotOlderThan' },
        (type: string, object: Obj) => {
          if (type === 'BOOKMARK') {
            if (object['metadata']?.annotations?.['k8s.io/initial-events-end'] === 'true') synced();
            return;
          }
          if (type === 'DELETED') store.delete(keyOf(object));
          else if (type === 'ADDED' || type === 'MODIFIED') store.set(keyOf(object), object);
          this.activity.emit('change', kind);
        },
        () => {
          // the server ends watches now and then: reopen, and get the current state again
          if (!this.stopped) void open().catch(() => {});
        },
      );
      this.aborts.push(controller);
    };
    await open();
    await initial;
  }

  list(kind: MirroredKind): Obj[] {
    return [...(this.stores.get(kind)?.values() ?? [])];
  }

  get(kind: MirroredKind, key: string): Obj | undefined {
    return this.stores.get(kind)?.get(key);
  }

  node(name: string): Obj {
    const node = this.get('nodes', name);
    if (node === undefined) throw new Error(`node ${name} is not in the cluster`);
    return node;
  }

  annotations(node: string): Record<string, string> {
    return this.node(node)['metadata'].annotations ?? {};
  }

  /** Events whose involved object is `name` (any kind when kind is omitted). */
  events(name?: string, kind?: string): Obj[] {
    return this.list('events').filter((e) => (name === undefined || e['involvedObject']?.name === name) && (kind === undefined || e['involvedObject']?.kind === kind));
  }

  /** Resolves once `predicate` holds, checking it after every watch event; the deadline only reports a hang. */
  waitFor(what: string, predicate: () => boolean, timeoutMs = 30_000, extra?: EventEmitter): Promise<void> {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        let ok = false;
        try {
          ok = predicate();
        } catch (error) {
          done();
          reject(error as Error);
          return;
        }
        if (!ok) return;
        done();
        resolve();
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${timeoutMs / 1000} s waiting for ${what}`));
      }, timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.activity.off('change', check);
        extra?.off('change', check);
      };
      this.activity.on('change', check);
      extra?.on('change', check);
    });
  }

  stop(): void {
    this.stopped = true;
    for (const controller of this.aborts.splice(0)) controller.abort();
  }
}
