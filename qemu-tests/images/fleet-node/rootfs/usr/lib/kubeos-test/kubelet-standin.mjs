// A STAND-IN for the kubelet, for the QEMU fleet test only: the small test image has no container
// runtime, so no real kubelet can run in it. It does what the control plane sees of a kubelet,
// with a kubelet's credentials (a client certificate for system:node:NAME, so the Node authorizer
// and NodeRestriction hold it to its own objects):
//   - registers its Node and reports it Ready, with capacity for the scheduler;
//   - renews its Lease in kube-node-lease every 2 s: when the guest reboots, the renewals stop and
//     kube-controller-manager's node lifecycle controller marks the Node NotReady, as for a real one;
//   - reports the pods the scheduler bound to it Running and Ready (it runs no containers), and
//     confirms the deletion of its evicted pods, as a kubelet does once their containers stop.
// Reads /etc/kubeos/kubelet-standin.json: { nodeName, server, ca, cert, key } (PEM texts).
import { readFileSync } from 'node:fs';
import { Agent, request } from 'node:https';

const config = JSON.parse(readFileSync(process.argv[2] ?? '/etc/kubeos/kubelet-standin.json', 'utf8'));
const name = config.nodeName;
const server = new URL(config.server);
const agent = new Agent({ keepAlive: true, maxSockets: 2, ca: config.ca, cert: config.cert, key: config.key });

function log(line) {
  process.stdout.write(`kubelet-standin: ${line}\n`);
}

function call(method, path, body, contentType = 'application/json') {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const req = request({
      host: server.hostname, port: server.port || 443, method, path, agent, timeout: 15_000,
      headers: { accept: 'application/json', ...(data === undefined ? {} : { 'content-type': contentType, 'content-length': data.length }) },
    }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let parsed;
        try { parsed = JSON.parse(text); } catch { parsed = text; }
        resolve({ status: res.statusCode ?? 0, body: parsed });
      });
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    req.end(data);
  });
}

// metav1.MicroTime wants six fractional digits
const microTime = () => new Date().toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
const nowTime = () => new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');

function osImage() {
  try {
    return /^PRETTY_NAME="?([^"\n]*)/m.exec(readFileSync('/etc/os-release', 'utf8'))?.[1] ?? 'kubeos';
  } catch {
    return 'kubeos';
  }
}

async function register() {
  const node = {
    apiVersion: 'v1', kind: 'Node',
    metadata: { name, labels: { 'kubernetes.io/hostname': name, 'kubernetes.io/os': 'linux', 'kubernetes.io/arch': 'amd64' } },
  };
  const res = await call('POST', '/api/v1/nodes', node);
  if (res.status !== 201 && res.status !== 409) throw new Error(`registering Node ${name}: HTTP ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`);
  log(res.status === 201 ? `registered Node ${name}` : `Node ${name} already registered`);
}

async function reportStatus() {
  const now = nowTime();
  const resources = { cpu: '2', memory: '1Gi', pods: '20' };
  const patch = {
    status: {
      capacity: resources, allocatable: resources,
      conditions: [{ type: 'Ready', status: 'True', reason: 'KubeletReady', message: 'kubelet stand-in is posting ready status', lastHeartbeatTime: now, lastTransitionTime: now }],
      nodeInfo: { kubeletVersion: 'v1.36.3-standin', osImage: osImage(), operatingSystem: 'linux', architecture: 'amd64', machineID: '', systemUUID: '', bootID: '', kernelVersion: '', containerRuntimeVersion: '', kubeProxyVersion: '' },
    },
  };
  const res = await call('PATCH', `/api/v1/nodes/${name}/status`, patch, 'application/strategic-merge-patch+json');
  if (res.status !== 200) throw new Error(`node status: HTTP ${res.status}`);
}

async function renewLease() {
  const path = `/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/${name}`;
  const res = await call('PATCH', path, { spec: { holderIdentity: name, leaseDurationSeconds: 40, renewTime: microTime() } }, 'application/merge-patch+json');
  if (res.status === 404) {
    const created = await call('POST', '/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases', {
      apiVersion: 'coordination.k8s.io/v1', kind: 'Lease', metadata: { name, namespace: 'kube-node-lease' },
      spec: { holderIdentity: name, leaseDurationSeconds: 40, renewTime: microTime() },
    });
    if (created.status !== 201 && created.status !== 409) throw new Error(`lease: HTTP ${created.status}`);
  } else if (res.status !== 200) {
    throw new Error(`lease: HTTP ${res.status}`);
  }
}

async function syncPods() {
  const res = await call('GET', `/api/v1/pods?fieldSelector=${encodeURIComponent(`spec.nodeName=${name}`)}`);
  if (res.status !== 200) throw new Error(`pods: HTTP ${res.status}`);
  for (const pod of res.body.items ?? []) {
    const { namespace, name: podName, uid, deletionTimestamp } = pod.metadata;
    if (deletionTimestamp !== undefined) {
      // a kubelet deletes the pod for good once its containers have stopped: none run here
      await call('DELETE', `/api/v1/namespaces/${namespace}/pods/${podName}`, { kind: 'DeleteOptions', apiVersion: 'v1', gracePeriodSeconds: 0, preconditions: { uid } });
      log(`pod ${namespace}/${podName} deleted`);
      continue;
    }
    const ready = (pod.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
    if (ready) continue;
    const now = nowTime();
    const condition = (type) => ({ type, status: 'True', lastTransitionTime: now });
    const status = {
      status: {
        phase: 'Running', startTime: now, hostIP: '10.0.2.15', podIP: '10.0.2.15',
        conditions: ['PodScheduled', 'Initialized', 'ContainersReady', 'Ready'].map(condition),
      },
    };
    const patched = await call('PATCH', `/api/v1/namespaces/${namespace}/pods/${podName}/status`, status, 'application/merge-patch+json');
    if (patched.status === 200) log(`pod ${namespace}/${podName} running`);
  }
}

function every(ms, what, fn) {
  let failing = false;
  const tick = async () => {
    try {
      await fn();
      if (failing) log(`${what} works again`);
      failing = false;
    } catch (error) {
      if (!failing) log(`${what} failed: ${error.message}`);
      failing = true;
    }
    setTimeout(tick, ms).unref();
  };
  return tick();
}

for (;;) {
  try {
    await register();
    break;
  } catch (error) {
    log(`${error.message}; retrying`);
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}
await every(2000, 'lease renewal', renewLease);
await every(10_000, 'node status', reportStatus);
log(`node ${name} ready`);
await every(2000, 'pod sync', syncPods);
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 1 << 30);
