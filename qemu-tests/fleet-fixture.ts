/**
 * A fleet of QEMU guests that are Nodes of a real control plane (scripts/kube/control-plane.ts),
 * for qemu-tests/fleet.test.ts and the fleet bench:
 * - the control plane on 127.0.0.1 with `kubectl apply -k deploy/` applied, kube-controller-manager
 *   (node lifecycle, ReplicaSets, PodDisruptionBudgets) and kube-scheduler;
 * - the operator on the host as `kubeos operator run` with its service account's token (the
 *   Deployment in deploy/ never gets a pod: no deployment controller runs, and the guests run no
 *   containers);
 * - each guest built from qemu-tests/images/fleet-node and reaching, through QEMU's user network
 *   with restrict=on, only: the image server (10.0.2.100:80), the API server (10.0.2.101:443) and
 *   its own metadata server (10.0.2.102:80), which hands it its node name, a kubelet client
 *   certificate for the kubelet STAND-IN and a Node-bound token of the kubeos-agent service account
 *   for the agent, which runs as the host's own service in cluster mode;
 * - a ReplicaSet of three pods spread by the scheduler, with a PodDisruptionBudget;
 * - a Node object without a guest (`bystander`, labelled for deploy/'s agent DaemonSet but not
 *   kubeos.io/agent=host): the DaemonSet controller gives it an agent pod and the guests none.
 * Guests boot once, one at a time, and stay up; a rollout reboots one node at a time.
 */
import type { ExecutionContext } from 'ava';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { createBundle, type CreatedBundle } from '../builder/bundle/create-bundle.js';
import type { BuildResult } from '../builder/build/build-image.js';
import { QemuVm } from '../builder/qemu/start-qemu.js';
import { OperatorCluster, systemNamespace } from '../test/operator/cluster-fixture.js';
import { makeKeys, type TestKeys } from '../test/helpers/bundle-fixtures.js';
import { cliPath } from '../test/helpers/cli.js';
import { makeTempDir } from '../test/helpers/temp-dir.js';
import { publishToDir, startUpdateServer, type UpdateServer } from '../test/helpers/update-server.js';
import { bootTimeoutMs, buildTestImage, copyDisk } from './build-fixture.js';

export const fleetImage = 'qemu-tests/images/fleet-node';
const apiAddress = '10.0.2.101';
const workloadNamespace = 'shop';

export interface Guest {
  name: string;
  disk: string;
  vm: QemuVm;
  metadata: Server;
}

/** One node's phase changes, as the operator recorded them on the Node (ms since the epoch). */
export interface PhaseTimes {
  node: string;
  phases: { phase: string; at: number }[];
}

export class Fleet {
  readonly guests: Guest[] = [];
  readonly bundles = new Map<string, CreatedBundle>();
  private operator: ResultPromise | undefined;
  private serial = 0;
  private published: CreatedBundle[] = [];

  private constructor(
    readonly cluster: OperatorCluster,
    readonly dir: string,
    readonly keys: TestKeys,
    readonly site: string,
    readonly server: UpdateServer,
    readonly log: (line: string) => void,
  ) {}

  /**
   * `versions`: the releases to build (the first is what the guests boot); `t` collects the
   * clean-ups of the temporary directories and the update server.
   */
  static async start(t: ExecutionContext, options: { nodes: number; versions: string[]; log?: (line: string) => void }): Promise<Fleet> {
    const log = options.log ?? (() => {});
    const dir = await makeTempDir(t, 'kubeos-qemu-fleet-');
    const keys = await makeKeys(dir);
    const site = join(dir, 'site');
    const server = await startUpdateServer(t, site);
    const cluster = await OperatorCluster.start({ controllerManager: false, servingAddresses: [apiAddress] });
    const fleet = new Fleet(cluster, dir, keys, site, server, log);
    try {
      const plane = cluster.plane;
      // node lifecycle: a Node whose Lease stops being renewed goes NotReady within the grace period
      // the DaemonSet controller too: deploy/'s agent DaemonSet must keep off hosts that run the agent themselves
      await plane.startControllerManager({ controllers: ['nodelifecycle', 'replicaset', 'daemonset'], args: ['--node-monitor-period=2s', '--node-monitor-grace-period=12s'] });
      await plane.startScheduler();
      const builds: BuildResult[] = [];
      for (const version of options.versions) {
        const started = Date.now();
        const build = await buildTestImage({ image: fleetImage, version, trustedKeys: [keys.publicPath] });
        builds.push(build);
        fleet.bundles.set(version, await createBundle({
          rootfs: join(build.out, 'rootfs.img'),
          out: join(dir, `${version}.kubeos`),
          privateKey: keys.privateKey,
          metadata: { os: 'kubeos', version, arch: build.image.arch, compatible: build.image.compatible, kernelVersion: build.image.kernelVersion },
          sourceDateEpoch: 1_700_000_000,
        }));
        log(`built ${version} and its bundle in ${Math.round((Date.now() - started) / 1000)} s`);
      }
      await cluster.core.createNode({ body: { metadata: { name: 'bystander', labels: { 'kubernetes.io/hostname': 'bystander', 'kubeos.io/managed': 'true' } } } });
      for (let i = 1; i <= options.nodes; i++) await fleet.addGuest(`fleet-${i}`, builds[0]!);
      await fleet.startWorkload();
      fleet.startOperator();
      return fleet;
    } catch (error) {
      await fleet.stop();
      throw error;
    }
  }

  /** Publishes `version` to channel stable; the signed index also lists every release published before. */
  async publish(version: string): Promise<void> {
    const bundle = this.bundles.get(version);
    if (bundle === undefined) throw new Error(`no bundle built for ${version}`);
    this.serial++;
    await publishToDir(this.site, bundle, this.keys.privateKey, { serial: this.serial, earlier: [...this.published].reverse() });
    this.published.push(bundle);
  }

  private async addGuest(name: string, build: BuildResult): Promise<void> {
    const plane = this.cluster.plane;
    // pre-registered, as a provisioning system does, so the agent's token can be bound to it
    // kubeos.io/agent=host: its agent is the host's own service, so deploy/'s DaemonSet keeps off it
    await this.cluster.core.createNode({ body: { metadata: { name, labels: { 'kubernetes.io/hostname': name, 'kubeos.io/managed': 'true', 'kubeos.io/agent': 'host' } } } });
    const kubelet = await plane.nodeCredentials(name);
    const agentKubeconfig = await plane.serviceAccountKubeconfig(systemNamespace, 'kubeos-agent', { boundNode: name, server: `https://${apiAddress}`, embedCa: true, expirationSeconds: 6 * 3600 });
    const body = JSON.stringify({
      nodeName: name,
      kubeconfig: await readFile(agentKubeconfig, 'utf8'),
      kubelet: {
        nodeName: name,
        server: `https://${apiAddress}`,
        ca: await readFile(plane.caFile, 'utf8'),
        cert: await readFile(kubelet.cert, 'utf8'),
        key: await readFile(kubelet.key, 'utf8'),
      },
    });
    const metadata = createServer((req, res) => {
      if (req.url === '/node.json') res.writeHead(200, { 'content-type': 'application/json' }).end(body);
      else res.writeHead(404).end();
    });
    await new Promise<void>((resolve) => metadata.listen(0, '127.0.0.1', resolve));
    const disk = await copyDisk(build, name);
    const vm = await QemuVm.start({
      disk,
      log: join(this.dir, name, 'console.log'),
      memoryMiB: 640,
      forwards: [
        { guestAddress: '10.0.2.100', guestPort: 80, hostPort: Number(new URL(this.server.url).port) },
        { guestAddress: apiAddress, guestPort: 443, hostPort: Number(new URL(plane.url).port) },
        { guestAddress: '10.0.2.102', guestPort: 80, hostPort: (metadata.address() as AddressInfo).port },
      ],
    });
    this.guests.push({ name, disk, vm, metadata });
    const started = Date.now();
    await vm.waitFor(/^kubelet-standin: node \S+ ready$/, bootTimeoutMs);
    await this.cluster.mirror.waitFor(`Node ${name} Ready`, () => this.ready(name), 60_000);
    this.log(`${name} booted and Ready in ${Math.round((Date.now() - started) / 1000)} s`);
  }

  ready(node: string): boolean {
    const n = this.cluster.mirror.get('nodes', node) as { status?: { conditions?: { type: string; status: string }[] } } | undefined;
    return n?.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;
  }

  guest(name: string): Guest {
    const guest = this.guests.find((g) => g.name === name);
    if (guest === undefined) throw new Error(`no guest ${name}`);
    return guest;
  }

  /** Runs a shell command on a guest's serial console; returns its exit code. */
  async shell(node: string, command: string, timeoutMs = 120_000): Promise<string> {
    const vm = this.guest(node).vm;
    const marker = `done-${Math.random().toString(36).slice(2, 8)}`;
    vm.send(`${command}; echo "${marker}=$?"`);
    const line = await vm.waitFor(new RegExp(`${marker}=\\d+$`), timeoutMs);
    return line.slice(line.indexOf(marker) + marker.length + 1);
  }

  /** What a shell command prints on a guest (one line), read on its console. */
  async output(node: string, command: string): Promise<string> {
    const vm = this.guest(node).vm;
    const marker = `out-${Math.random().toString(36).slice(2, 8)}`;
    vm.send(`echo "${marker}=$(${command} 2>&1 | tr '\\n' ' ')"`);
    const line = await vm.waitFor(new RegExp(`^${marker}=`), 120_000);
    return line.slice(marker.length + 1).trim();
  }

  /** The guest's `kubeos agent status --json`, read on its console. */
  async agentStatus(node: string): Promise<{ booted: string; fellBack: boolean; slots: Record<string, { state: string; version?: string }> }> {
    const vm = this.guest(node).vm;
    vm.send('echo "status=$(kubeos agent status --json | tr -d " \\n")"');
    const line = await vm.waitFor(/^status=\{/, 120_000);
    return JSON.parse(line.slice('status='.length)) as never;
  }

  private async startWorkload(): Promise<void> {
    const { cluster } = this;
    await cluster.ensureNamespace(workloadNamespace);
    const labels = { app: 'web' };
    await cluster.apps.createNamespacedReplicaSet({
      namespace: workloadNamespace,
      body: {
        metadata: { name: 'web', namespace: workloadNamespace },
        spec: {
          replicas: this.guests.length,
          selector: { matchLabels: labels },
          template: {
            metadata: { labels },
            spec: {
              terminationGracePeriodSeconds: 0,
              automountServiceAccountToken: false,
              // the kubelet stand-in runs no containers: the image is never pulled
              containers: [{ name: 'web', image: 'registry.invalid/web:1', resources: { requests: { cpu: '100m', memory: '32Mi' } } }],
              topologySpreadConstraints: [{ maxSkew: 1, topologyKey: 'kubernetes.io/hostname', whenUnsatisfiable: 'ScheduleAnyway', labelSelector: { matchLabels: labels } }],
            },
          },
        },
      },
    });
    await cluster.plane.kubectlOk(['create', 'poddisruptionbudget', 'web', '-n', workloadNamespace, '--selector=app=web', '--max-unavailable=1']);
    await cluster.mirror.waitFor('three web pods running on the nodes', () => this.readyPods().length === this.guests.length, 120_000);
  }

  /** The workload's pods that are bound to a node and Ready, with their node. */
  readyPods(): { name: string; node: string }[] {
    return this.cluster.mirror.list('pods')
      .filter((p) => (p as { metadata?: { namespace?: string } }).metadata?.namespace === workloadNamespace)
      .filter((p) => (p as { status?: { conditions?: { type: string; status: string }[] } }).status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True'))
      .filter((p) => (p as { metadata?: { deletionTimestamp?: unknown } }).metadata?.deletionTimestamp === undefined)
      .map((p) => ({ name: (p as { metadata: { name: string } }).metadata.name, node: (p as { spec: { nodeName: string } }).spec.nodeName }));
  }

  private startOperator(): void {
    const logFile = join(this.dir, 'operator.log');
    this.operator = execa('node', [cliPath, 'operator', 'run', '--kubeconfig', this.cluster.operatorKubeconfig, '--metrics-address', 'off', '--interval', '5', '--identity', 'fleet-test'], {
      reject: false, stdout: { file: logFile }, stderr: { file: logFile }, cleanup: true, forceKillAfterDelay: 5000,
    });
  }

  async operatorLog(): Promise<string> {
    return readFile(join(this.dir, 'operator.log'), 'utf8').catch(() => '');
  }

  async stop(): Promise<void> {
    this.operator?.kill('SIGTERM');
    await this.operator;
    for (const guest of this.guests) {
      await guest.vm.stop();
      guest.metadata.close();
    }
    await this.cluster.stop();
  }
}
