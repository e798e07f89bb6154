/**
 * A REAL Kubernetes control plane for tests and benches, in the spirit of controller-runtime's envtest: etcd and
 * kube-apiserver (and kube-controller-manager on request) of the release that
 * scripts/install-kubernetes.sh pins and builds, on 127.0.0.1 with real authentication (a test CA,
 * client certificates, service-account tokens signed by the API server), the Node and RBAC
 * authorizers, and admission with ValidatingAdmissionPolicy on. A test file starts one in
 * `test.before` and stops it in `test.after.always`; stopping removes every file it wrote.
 *
 * There is no kubelet: Nodes are objects the tests create, and a test that needs a node to go
 * NotReady patches its status itself (that patch is the kubelet's stand-in). The QEMU fleet test
 * gives each guest node credentials (`nodeCredentials`) for a stand-in kubelet of its own.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request as httpsRequest } from 'node:https';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { projectRoot } from '../../builder/project-root.js';
import { requireTools } from '../../runtime/core/exec.js';

const repoRoot = projectRoot();
const keep = process.env['KUBEOS_KEEP_TEST_DIRS'] === '1';

export interface KubectlResult {
  exitCode: number;
  stdout: string;
  stderr: string;
}

export interface ServiceAccountToken {
  /** Bind the token to this pod (and so to the node it is scheduled on). */
  boundPod?: { namespace: string; name: string };
  /** Bind the token to this Node (an agent running as the host's own service, not in a pod). */
  boundNode?: string;
  expirationSeconds?: number;
  /** Another server URL for the kubeconfig (a proxy in front of this API server). */
  server?: string;
  /** Carry the CA certificate in the kubeconfig, so the file works on another machine (a guest). */
  embedCa?: boolean;
}

export interface ControlPlane {
  /** https://127.0.0.1:PORT */
  url: string;
  dir: string;
  bin: string;
  caFile: string;
  /** A kubeconfig for a cluster admin (client certificate in system:masters). */
  adminKubeconfig: string;
  admin: KubeConfig;
  /** The API server's audit log: one JSON object per line, every request with its user and code. */
  auditLog: string;
  kubectl(args: readonly string[], options?: { kubeconfig?: string; input?: string }): Promise<KubectlResult>;
  /** Runs kubectl as the admin and fails with its stderr when it fails. */
  kubectlOk(args: readonly string[], options?: { kubeconfig?: string; input?: string }): Promise<string>;
  /** Writes a kubeconfig that authenticates as namespace/name with a TokenRequest token. */
  serviceAccountKubeconfig(namespace: string, name: string, token?: ServiceAccountToken): Promise<string>;
  /** Writes a kubeconfig for this cluster with any server URL (a proxy in front of it) and user. */
  writeKubeconfig(name: string, options: { server?: string; token: string; embedCa?: boolean }): Promise<string>;
  /**
   * A client certificate for system:node:NAME (group system:nodes), as a kubelet has: the Node
   * authorizer and NodeRestriction let it register and update only its own Node, Lease and pods.
   */
  nodeCredentials(nodeName: string): Promise<{ cert: string; key: string }>;
  /**
   * Starts kube-controller-manager (the disruption controller keeps PodDisruptionBudget status, the
   * garbage collector removes orphans); `controllers` and `args` add to the defaults.
   */
  startControllerManager(options?: { controllers?: string[]; args?: string[] }): Promise<void>;
  /** Starts kube-scheduler, for tests whose pods are made by controllers and placed on nodes. */
  startScheduler(): Promise<void>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** The bin directory of the pinned release; the install script builds it once and then only prints it. */
async function kubernetesBin(): Promise<string> {
  const override = process.env['KUBEOS_KUBERNETES_BIN'];
  if (override !== undefined) return override;
  const result = await execa('bash', [join(repoRoot, 'scripts/install-kubernetes.sh')], { reject: false, timeout: 60 * 60_000 });
  if (result.exitCode !== 0) throw new Error(`scripts/install-kubernetes.sh failed (exit ${result.exitCode}):\n${String(result.stderr).slice(-2000)}`);
  const lines = String(result.stdout).trim().split('\n');
  return lines[lines.length - 1]!;
}

async function openssl(args: readonly string[]): Promise<void> {
  await requireTools(['openssl']);
  await execa('openssl', args, { timeout: 60_000 });
}

/** A key and a certificate signed by the test CA (EC P-256, two days). */
async function issueCertificate(dir: string, name: string, subject: string, extensions: string[]): Promise<{ cert: string; key: string }> {
  const key = join(dir, `${name}.key`);
  const csr = join(dir, `${name}.csr`);
  const cert = join(dir, `${name}.crt`);
  const ext = join(dir, `${name}.ext`);
  await writeFile(ext, `${extensions.join('\n')}\n`);
  await openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-subj', subject, '-out', csr]);
  await openssl(['x509', '-req', '-in', csr, '-CA', join(dir, 'ca.crt'), '-CAkey', join(dir, 'ca.key'), '-CAcreateserial', '-days', '2', '-extfile', ext, '-out', cert]);
  return { cert, key };
}

function kubeconfigText(options: { server: string; caFile: string; caData?: Buffer; user: Record<string, string> }): string {
  const ca = options.caData === undefined ? { 'certificate-authority': options.caFile } : { 'certificate-authority-data': options.caData.toString('base64') };
  // JSON is YAML: kubectl and client-node read it as a kubeconfig.
  return `${JSON.stringify({
    apiVersion: 'v1',
    kind: 'Config',
    clusters: [{ name: 'kubeos-test', cluster: { server: options.server, ...ca } }],
    users: [{ name: 'user', user: options.user }],
    contexts: [{ name: 'kubeos-test', context: { cluster: 'kubeos-test', user: 'user' } }],
    'current-context': 'kubeos-test',
  }, null, 2)}\n`;
}

async function tail(file: string): Promise<string> {
  try {
    return (await readFile(file, 'utf8')).slice(-3000);
  } catch {
    return '(no log)';
  }
}

/** Resolves once GET path answers 200 with the admin's certificate; rejects if the process exits first. */
async function waitHealthy(url: string, path: string, tls: { ca: Buffer; cert: Buffer; key: Buffer }, proc: ResultPromise, what: string, log: string, timeoutMs = 120_000): Promise<void> {
  let exited = false;
  void proc.then(() => (exited = true), () => (exited = true));
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (exited) throw new Error(`${what} exited before it was healthy:\n${await tail(log)}`);
    const ok = await new Promise<boolean>((resolve) => {
      const req = httpsRequest(`${url}${path}`, { ...tls, timeout: 2000 }, (res) => {
        res.resume();
        resolve(res.statusCode === 200);
      });
      req.on('error', () => resolve(false));
      req.on('timeout', () => req.destroy());
      req.end();
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${what} not healthy at ${url}${path} after ${timeoutMs / 1000} s:\n${await tail(log)}`);
    // readiness of a process we started, not test synchronisation: poll it briefly
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

/**
 * `servingAddresses`: more IP addresses the serving certificate names, for clients that reach
 * 127.0.0.1 by another address (a QEMU guest's guestfwd address); the server still listens on
 * 127.0.0.1 only.
 */
export async function startControlPlane(options: { controllerManager?: boolean; servingAddresses?: string[] } = {}): Promise<ControlPlane> {
  const bin = await kubernetesBin();
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-control-plane-'));
  const processes: ResultPromise[] = [];
  let stopped = false;

  const stop = async () => {
    if (stopped) return;
    stopped = true;
    for (const proc of processes.reverse()) proc.kill('SIGTERM');
    await Promise.allSettled(processes);
    if (!keep) await rm(dir, { recursive: true, force: true });
  };

  try {
    const pki = join(dir, 'pki');
    await mkdir(pki);
    await openssl([
      'req', '-x509', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', join(pki, 'ca.key'), '-out', join(pki, 'ca.crt'), '-subj', '/CN=kubeos-test-ca', '-days', '2',
      '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    const caFile = join(pki, 'ca.crt');
    const serving = await issueCertificate(pki, 'serving', '/CN=kube-apiserver', [
      `subjectAltName=${['IP:127.0.0.1', ...(options.servingAddresses ?? []).map((a) => `IP:${a}`), 'DNS:localhost'].join(',')}`, 'extendedKeyUsage=serverAuth', 'keyUsage=critical,digitalSignature',
    ]);
    const adminCert = await issueCertificate(pki, 'admin', '/O=system:masters/CN=kubeos-test-admin', [
      'extendedKeyUsage=clientAuth', 'keyUsage=critical,digitalSignature',
    ]);
    const saKeys = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const saKey = join(pki, 'service-account.key');
    const saPub = join(pki, 'service-account.pub');
    await writeFile(saKey, saKeys.privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    await writeFile(saPub, saKeys.publicKey.export({ type: 'spki', format: 'pem' }));

    const etcdPort = await freePort();
    const etcdPeerPort = await freePort();
    const etcdLog = join(dir, 'etcd.log');
    const etcd = execa(join(bin, 'etcd'), [
      '--name', 'kubeos-test', '--data-dir', join(dir, 'etcd'),
      '--listen-client-urls', `http://127.0.0.1:${etcdPort}`, '--advertise-client-urls', `http://127.0.0.1:${etcdPort}`,
      '--listen-peer-urls', `http://127.0.0.1:${etcdPeerPort}`, '--initial-advertise-peer-urls', `http://127.0.0.1:${etcdPeerPort}`,
      '--initial-cluster', `kubeos-test=http://127.0.0.1:${etcdPeerPort}`,
      '--unsafe-no-fsync', '--log-level', 'warn',
    ], { stdout: { file: etcdLog }, stderr: { file: etcdLog }, reject: false, cleanup: true, forceKillAfterDelay: 5000 });
    processes.push(etcd);

    const port = await freePort();
    const url = `https://127.0.0.1:${port}`;
    const auditLog = join(dir, 'audit.log');
    const auditPolicy = join(dir, 'audit-policy.yaml');
    await writeFile(auditPolicy, JSON.stringify({ apiVersion: 'audit.k8s.io/v1', kind: 'Policy', omitStages: ['RequestReceived'], rules: [{ level: 'Metadata' }] }));
    const apiserverLog = join(dir, 'kube-apiserver.log');
    const apiserver = execa(join(bin, 'kube-apiserver'), [
      `--etcd-servers=http://127.0.0.1:${etcdPort}`,
      '--bind-address=127.0.0.1', '--advertise-address=127.0.0.1', `--secure-port=${port}`,
      `--tls-cert-file=${serving.cert}`, `--tls-private-key-file=${serving.key}`,
      `--client-ca-file=${caFile}`,
      '--service-account-issuer=https://kubernetes.default.svc.cluster.local',
      `--service-account-key-file=${saPub}`, `--service-account-signing-key-file=${saKey}`,
      '--service-cluster-ip-range=10.0.0.0/24',
      '--authorization-mode=Node,RBAC',
      // ValidatingAdmissionPolicy is GA and on by default; NodeRestriction is what real clusters add
      '--enable-admission-plugins=NodeRestriction',
      '--allow-privileged=true',
      `--audit-policy-file=${auditPolicy}`, `--audit-log-path=${auditLog}`, '--audit-log-mode=blocking',
      '--profiling=false', '--v=0',
    ], { stdout: { file: apiserverLog }, stderr: { file: apiserverLog }, reject: false, cleanup: true, forceKillAfterDelay: 5000 });
    processes.push(apiserver);

    const tls = { ca: await readFile(caFile), cert: await readFile(adminCert.cert), key: await readFile(adminCert.key) };
    await waitHealthy(url, '/readyz', tls, apiserver, 'kube-apiserver', apiserverLog);

    const adminKubeconfig = join(dir, 'admin.kubeconfig');
    await writeFile(adminKubeconfig, kubeconfigText({ server: url, caFile, user: { 'client-certificate': adminCert.cert, 'client-key': adminCert.key } }), { mode: 0o600 });
    const admin = new KubeConfig();
    admin.loadFromFile(adminKubeconfig);
    const core = admin.makeApiClient(CoreV1Api);

    const kubectl = async (args: readonly string[], opts: { kubeconfig?: string; input?: string } = {}): Promise<KubectlResult> => {
      const result = await execa(join(bin, 'kubectl'), ['--kubeconfig', opts.kubeconfig ?? adminKubeconfig, ...args], {
        reject: false, timeout: 120_000, ...(opts.input === undefined ? {} : { input: opts.input }), cwd: repoRoot,
      });
      return { exitCode: result.exitCode ?? 1, stdout: String(result.stdout), stderr: String(result.stderr) };
    };
    let counter = 0;
    const writeKubeconfig = async (name: string, opts: { server?: string; token: string; embedCa?: boolean }) => {
      const file = join(dir, `${name}-${++counter}.kubeconfig`);
      const caData = opts.embedCa === true ? await readFile(caFile) : undefined;
      await writeFile(file, kubeconfigText({ server: opts.server ?? url, caFile, ...(caData === undefined ? {} : { caData }), user: { token: opts.token } }), { mode: 0o600 });
      return file;
    };

    const plane: ControlPlane = {
      url,
      dir,
      bin,
      caFile,
      adminKubeconfig,
      admin,
      auditLog,
      kubectl,
      async kubectlOk(args, opts) {
        const result = await kubectl(args, opts);
        if (result.exitCode !== 0) throw new Error(`kubectl ${args.join(' ')} failed (exit ${result.exitCode}): ${result.stderr}`);
        return result.stdout;
      },
      writeKubeconfig,
      async serviceAccountKubeconfig(namespace, name, token = {}) {
        let boundObjectRef;
        if (token.boundPod !== undefined) {
          const pod = await core.readNamespacedPod({ namespace: token.boundPod.namespace, name: token.boundPod.name });
          boundObjectRef = { apiVersion: 'v1', kind: 'Pod', name: token.boundPod.name, uid: pod.metadata?.uid };
        } else if (token.boundNode !== undefined) {
          const node = await core.readNode({ name: token.boundNode });
          boundObjectRef = { apiVersion: 'v1', kind: 'Node', name: token.boundNode, uid: node.metadata?.uid };
        }
        const response = await core.createNamespacedServiceAccountToken({
          namespace,
          name,
          body: { spec: { audiences: [], expirationSeconds: token.expirationSeconds ?? 3600, ...(boundObjectRef === undefined ? {} : { boundObjectRef }) } },
        });
        const value = response.status?.token;
        if (value === undefined) throw new Error(`TokenRequest for ${namespace}/${name} returned no token`);
        return writeKubeconfig(`${namespace}-${name}`, { token: value, embedCa: token.embedCa, ...(token.server === undefined ? {} : { server: token.server }) });
      },
      async nodeCredentials(nodeName) {
        return issueCertificate(pki, `node-${nodeName}`, `/O=system:nodes/CN=system:node:${nodeName}`, [
          'extendedKeyUsage=clientAuth', 'keyUsage=critical,digitalSignature',
        ]);
      },
      async startControllerManager(cm = {}) {
        const log = join(dir, 'kube-controller-manager.log');
        const healthPort = await freePort();
        const proc = execa(join(bin, 'kube-controller-manager'), [
          `--kubeconfig=${adminKubeconfig}`,
          `--controllers=${['disruption', 'garbagecollector', 'serviceaccount', ...(cm.controllers ?? [])].join(',')}`,
          '--leader-elect=false', '--bind-address=127.0.0.1', `--secure-port=${healthPort}`,
          `--tls-cert-file=${serving.cert}`, `--tls-private-key-file=${serving.key}`,
          `--authentication-kubeconfig=${adminKubeconfig}`, `--authorization-kubeconfig=${adminKubeconfig}`,
          '--authorization-always-allow-paths=/healthz,/readyz,/livez',
          `--service-account-private-key-file=${saKey}`, '--use-service-account-credentials=false',
          ...(cm.args ?? []),
          '--v=0',
        ], { stdout: { file: log }, stderr: { file: log }, reject: false, cleanup: true, forceKillAfterDelay: 5000 });
        processes.push(proc);
        await waitHealthy(`https://127.0.0.1:${healthPort}`, '/healthz', tls, proc, 'kube-controller-manager', log);
      },
      async startScheduler() {
        const log = join(dir, 'kube-scheduler.log');
        const healthPort = await freePort();
        const proc = execa(join(bin, 'kube-scheduler'), [
          `--kubeconfig=${adminKubeconfig}`,
          '--leader-elect=false', '--bind-address=127.0.0.1', `--secure-port=${healthPort}`,
          `--tls-cert-file=${serving.cert}`, `--tls-private-key-file=${serving.key}`,
          `--authentication-kubeconfig=${adminKubeconfig}`, `--authorization-kubeconfig=${adminKubeconfig}`,
          '--authorization-always-allow-paths=/healthz,/readyz,/livez',
          '--v=0',
        ], { stdout: { file: log }, stderr: { file: log }, reject: false, cleanup: true, forceKillAfterDelay: 5000 });
        processes.push(proc);
        await waitHealthy(`https://127.0.0.1:${healthPort}`, '/healthz', tls, proc, 'kube-scheduler', log);
      },
      stop,
    };
    if (options.controllerManager === true) await plane.startControllerManager();
    return plane;
  } catch (error) {
    await stop();
    throw error;
  }
}
