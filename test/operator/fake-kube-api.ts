/**
 * A FAKE Kubernetes API server for tests: node:http on 127.0.0.1 (port 0), holding objects in
 * memory and implementing only what kubeos uses — nodes (get/list/patch/watch), pods (list by
 * spec.nodeName), pods/eviction (429 while a test-controlled "PDB" blocks a pod), events (create),
 * leases (get/create/replace with resourceVersion conflicts), OSUpgrades (get/list/patch/watch and
 * the status subresource). It speaks real HTTP so the real @kubernetes/client-node, its watches and
 * its error paths are exercised. It is not a real API server; no real one can run here.
 */
import { EventEmitter } from 'node:events';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

type Obj = Record<string, any>;
type Kind = 'nodes' | 'pods' | 'leases' | 'osupgrades' | 'events';

interface Watcher {
  kind: Kind;
  name: string | undefined;
  res: ServerResponse;
}

export interface RequestLogEntry {
  method: string;
  path: string;
  fieldManager: string | undefined;
  status: number;
}

function mergePatch(target: unknown, patch: unknown): unknown {
  if (typeof patch !== 'object' || patch === null || Array.isArray(patch)) return patch;
  const out: Obj = typeof target === 'object' && target !== null && !Array.isArray(target) ? { ...(target as Obj) } : {};
  for (const [k, v] of Object.entries(patch as Obj)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function status(code: number, reason: string, message: string): Obj {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', reason, message, code };
}

export class FakeKubeApi {
  readonly store: Record<Kind, Map<string, Obj>> = {
    nodes: new Map(),
    pods: new Map(),
    leases: new Map(),
    osupgrades: new Map(),
    events: new Map(),
  };
  readonly requests: RequestLogEntry[] = [];
  /** Pods ("ns/name") whose eviction a PodDisruptionBudget refuses with 429. */
  readonly pdbBlocked = new Set<string>();
  /** Makes the next matching requests fail with this HTTP status (error-path tests). */
  readonly faults: Array<{ method: string; path: RegExp; status: number; times: number; fieldManager?: string }> = [];
  private readonly watchers = new Set<Watcher>();
  /** 'change' after every stored change, 'request' after every request logged: tests wait on these, never on timers. */
  readonly activity = new EventEmitter();
  private rv = 1000;
  private server: Server | undefined;
  url = '';

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((error: unknown) => {
        if (!res.headersSent) this.send(res, 500, status(500, 'InternalError', String(error)), req);
        else res.end();
      });
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    const { port } = this.server.address() as AddressInfo;
    this.url = `http://127.0.0.1:${port}`;
    return this.url;
  }

  async stop(): Promise<void> {
    for (const w of this.watchers) w.res.end();
    this.watchers.clear();
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }

  // ---- test-side helpers (a kubelet, a controller, a person with kubectl) ----

  addNode(name: string, labels: Record<string, string> = {}, annotations: Record<string, string> = {}): void {
    this.put('nodes', name, {
      apiVersion: 'v1',
      kind: 'Node',
      metadata: { name, labels: { 'kubernetes.io/hostname': name, ...labels }, annotations },
      spec: {},
      status: { conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: new Date(Date.now() - 3_600_000).toISOString() }] },
    });
  }

  /** The kubelet's view: Ready flips with a new lastTransitionTime. */
  setNodeReady(name: string, ready: boolean): void {
    const node = this.store.nodes.get(name)!;
    const was = node['status'].conditions[0].status === 'True';
    if (was === ready) return;
    this.put('nodes', name, mergePatch(node, { status: { conditions: [{ type: 'Ready', status: ready ? 'True' : 'False', lastTransitionTime: new Date().toISOString() }] } }) as Obj);
  }

  addPod(namespace: string, name: string, nodeName: string, options: { ownerKind?: string; mirror?: boolean; emptyDir?: boolean } = {}): void {
    this.put('pods', `${namespace}/${name}`, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name,
        namespace,
        ...(options.mirror ? { annotations: { 'kubernetes.io/config.mirror': 'abc' } } : {}),
        ...(options.ownerKind ? { ownerReferences: [{ apiVersion: 'apps/v1', kind: options.ownerKind, name: 'owner', uid: 'u', controller: true }] } : {}),
      },
      spec: { nodeName, containers: [{ name: 'c', image: 'x' }], volumes: options.emptyDir ? [{ name: 'scratch', emptyDir: {} }] : [] },
      status: { phase: 'Running' },
    });
  }

  addOSUpgrade(name: string, spec: Obj): void {
    this.put('osupgrades', name, { apiVersion: 'kubeos.io/v1alpha1', kind: 'OSUpgrade', metadata: { name, generation: 1, creationTimestamp: new Date().toISOString() }, spec });
  }

  /** kubectl patch: a merge patch from outside (bumps generation on spec changes). */
  patch(kind: Kind, key: string, patch: Obj): Obj {
    const before = this.store[kind].get(key)!;
    const after = mergePatch(before, patch) as Obj;
    if (kind === 'osupgrades' && JSON.stringify(before['spec']) !== JSON.stringify(after['spec'])) {
      after['metadata'] = { ...after['metadata'], generation: (before['metadata']?.generation ?? 1) + 1 };
    }
    this.put(kind, key, after);
    return after;
  }

  node(name: string): Obj {
    return this.store.nodes.get(name)!;
  }

  annotations(name: string): Record<string, string> {
    return this.node(name)['metadata'].annotations ?? {};
  }

  events(): Obj[] {
    return [...this.store.events.values()];
  }

  // ---- the HTTP side ----

  private put(kind: Kind, key: string, object: Obj, type?: 'ADDED' | 'MODIFIED'): Obj {
    const existed = this.store[kind].has(key);
    const stored = { ...object, metadata: { ...object['metadata'], resourceVersion: String(++this.rv), uid: object['metadata']?.uid ?? `uid-${key}` } };
    this.store[kind].set(key, stored);
    this.notify(kind, type ?? (existed ? 'MODIFIED' : 'ADDED'), stored);
    return stored;
  }

  private remove(kind: Kind, key: string): void {
    const object = this.store[kind].get(key);
    if (object === undefined) return;
    this.store[kind].delete(key);
    this.notify(kind, 'DELETED', object);
  }

  private notify(kind: Kind, type: string, object: Obj): void {
    for (const w of this.watchers) {
      if (w.kind !== kind || (w.name !== undefined && w.name !== object['metadata'].name)) continue;
      w.res.write(`${JSON.stringify({ type, object })}\n`);
    }
    this.activity.emit('change');
  }

  /** Open watches on a kind. */
  watching(kind: Kind): number {
    return [...this.watchers].filter((w) => w.kind === kind).length;
  }

  private log(entry: RequestLogEntry): void {
    this.requests.push(entry);
    this.activity.emit('request', entry);
  }

  private send(res: ServerResponse, code: number, body: unknown, req: IncomingMessage): void {
    const url = new URL(req.url ?? '/', 'http://x');
    this.log({ method: req.method ?? '', path: url.pathname, fieldManager: url.searchParams.get('fieldManager') ?? undefined, status: code });
    res.writeHead(code, { 'content-type': 'application/json', ...(code === 429 ? { 'retry-after': '1' } : {}) });
    res.end(JSON.stringify(body));
  }

  private async body(req: IncomingMessage): Promise<Obj> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    return text === '' ? {} : (JSON.parse(text) as Obj);
  }

  private list(kind: Kind, items: Obj[]): Obj {
    return { kind: 'List', apiVersion: 'v1', metadata: { resourceVersion: String(this.rv) }, items };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://x');
    const method = req.method ?? 'GET';
    const path = url.pathname;
    const manager = url.searchParams.get('fieldManager') ?? undefined;
    const fault = this.faults.find((f) => f.method === method && f.path.test(path) && f.times > 0 && (f.fieldManager === undefined || f.fieldManager === manager));
    if (fault !== undefined) {
      fault.times--;
      await this.body(req);
      return this.send(res, fault.status, status(fault.status, 'InternalError', 'injected fault'), req);
    }
    const field = url.searchParams.get('fieldSelector') ?? '';
    const fieldName = /^metadata\.name=(.+)$/.exec(field)?.[1];
    let m: RegExpExecArray | null;

    const routes: Array<[RegExp, Kind, boolean]> = [
      [/^\/api\/v1\/nodes$/, 'nodes', true],
      [/^\/apis\/kubeos\.io\/v1alpha1\/osupgrades$/, 'osupgrades', true],
    ];
    for (const [re, kind] of routes) {
      if (!re.test(path) || method !== 'GET') continue;
      const items = [...this.store[kind].values()].filter((o) => fieldName === undefined || o['metadata'].name === fieldName);
      if (url.searchParams.get('watch') === 'true') {
        res.writeHead(200, { 'content-type': 'application/json', 'transfer-encoding': 'chunked' });
        res.flushHeaders();
        const watcher: Watcher = { kind, name: fieldName, res };
        for (const o of items) res.write(`${JSON.stringify({ type: 'ADDED', object: o })}\n`);
        this.watchers.add(watcher);
        this.log({ method, path, fieldManager: undefined, status: 200 });
        req.on('close', () => this.watchers.delete(watcher));
        return;
      }
      return this.send(res, 200, this.list(kind, items), req);
    }

    if ((m = /^\/api\/v1\/nodes\/([^/]+)$/.exec(path))) {
      const name = decodeURIComponent(m[1]!);
      const node = this.store.nodes.get(name);
      if (node === undefined) return this.send(res, 404, status(404, 'NotFound', `nodes "${name}" not found`), req);
      if (method === 'GET') return this.send(res, 200, node, req);
      if (method === 'PATCH') {
        if (!String(req.headers['content-type']).startsWith('application/merge-patch+json')) {
          return this.send(res, 415, status(415, 'UnsupportedMediaType', `fake supports merge patches only, got ${req.headers['content-type']}`), req);
        }
        const patch = await this.body(req);
        return this.send(res, 200, this.put('nodes', name, mergePatch(node, patch) as Obj), req);
      }
    }

    if (path === '/api/v1/pods' && method === 'GET') {
      const nodeName = /^spec\.nodeName=(.+)$/.exec(field)?.[1];
      const items = [...this.store.pods.values()].filter((p) => nodeName === undefined || p['spec'].nodeName === nodeName);
      return this.send(res, 200, this.list('pods', items), req);
    }

    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/eviction$/.exec(path)) && method === 'POST') {
      const key = `${m[1]}/${m[2]}`;
      await this.body(req);
      if (!this.store.pods.has(key)) return this.send(res, 404, status(404, 'NotFound', `pods "${m[2]}" not found`), req);
      if (this.pdbBlocked.has(key)) {
        return this.send(res, 429, { ...status(429, 'TooManyRequests', "Cannot evict pod as it would violate the pod's disruption budget."), details: { causes: [{ reason: 'DisruptionBudget', message: 'The disruption budget needs 1 healthy pods and has 1 currently' }] } }, req);
      }
      this.remove('pods', key);
      return this.send(res, 201, { kind: 'Status', apiVersion: 'v1', status: 'Success', code: 201 }, req);
    }

    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/events$/.exec(path)) && method === 'POST') {
      const event = await this.body(req);
      const name = `${event['metadata']?.generateName ?? 'event.'}${this.rv}`;
      const stored = this.put('events', `${m[1]}/${name}`, { ...event, metadata: { ...event['metadata'], name, namespace: m[1] } });
      return this.send(res, 201, stored, req);
    }

    if ((m = /^\/apis\/coordination\.k8s\.io\/v1\/namespaces\/([^/]+)\/leases(?:\/([^/]+))?$/.exec(path))) {
      const ns = m[1]!;
      if (method === 'POST' && m[2] === undefined) {
        const lease = await this.body(req);
        const key = `${ns}/${lease['metadata'].name}`;
        if (this.store.leases.has(key)) return this.send(res, 409, status(409, 'AlreadyExists', `leases "${lease['metadata'].name}" already exists`), req);
        return this.send(res, 201, this.put('leases', key, lease), req);
      }
      const key = `${ns}/${m[2]}`;
      const current = this.store.leases.get(key);
      if (method === 'GET') {
        if (current === undefined) return this.send(res, 404, status(404, 'NotFound', `leases "${m[2]}" not found`), req);
        return this.send(res, 200, current, req);
      }
      if (method === 'PUT') {
        const lease = await this.body(req);
        if (current === undefined) return this.send(res, 404, status(404, 'NotFound', `leases "${m[2]}" not found`), req);
        if (lease['metadata']?.resourceVersion !== current['metadata'].resourceVersion) {
          return this.send(res, 409, status(409, 'Conflict', 'Operation cannot be fulfilled on leases: the object has been modified'), req);
        }
        return this.send(res, 200, this.put('leases', key, lease), req);
      }
    }

    if ((m = /^\/apis\/kubeos\.io\/v1alpha1\/osupgrades\/([^/]+)(\/status)?$/.exec(path))) {
      const name = decodeURIComponent(m[1]!);
      const current = this.store.osupgrades.get(name);
      if (current === undefined) return this.send(res, 404, status(404, 'NotFound', `osupgrades.kubeos.io "${name}" not found`), req);
      if (method === 'GET') return this.send(res, 200, current, req);
      if (method === 'PATCH') {
        const patch = await this.body(req);
        // the status subresource ignores everything but status, the main resource ignores status
        const scoped = m[2] ? { status: patch['status'] } : { ...patch, status: undefined };
        if (!m[2]) delete scoped.status;
        return this.send(res, 200, this.patch('osupgrades', name, scoped), req);
      }
    }

    await this.body(req);
    return this.send(res, 404, status(404, 'NotFound', `the fake API server does not implement ${method} ${path}`), req);
  }
}
