/** `kubeos operator run`: the fleet rollout operator (deploy/operator-deployment.yaml runs it). */
import { hostname } from 'node:os';
import type { Argv, CommandModule } from 'yargs';
import { KubeosError } from '../../core/errors.js';
import { reconcileAll, type ReconcileReport } from '../reconcile-rollout.js';
import { runOperator, type OperatorEvent } from '../run-operator.js';
import type { HealthState } from '../serve-health.js';
import { printResult, type GlobalArgs } from '../../cli/output.js';

interface RunArgs extends GlobalArgs {
  kubeconfig?: string;
  context?: string;
  namespace: string;
  'lease-name': string;
  identity: string;
  interval: number;
  'lease-duration': number;
  'metrics-address': string;
  'dry-run'?: boolean;
}

function describeReport(report: ReconcileReport): string[] {
  // an OSConfig is named with its kind; an OSUpgrade, the common case, by its name alone
  const r = report.kind === 'OSConfig' ? { ...report, rollout: `osconfig/${report.rollout}` } : report;
  if (r.invalid) return [`${r.rollout}: invalid: ${r.invalid.message}`];
  const lines: string[] = [];
  const s = r.plan?.status;
  if (s && (r.applied > 0 || r.errors.length > 0)) {
    lines.push(`${r.rollout}: ${s.phase} ${s.counts.done}/${s.counts.total} on ${s.targetVersion}, ${s.counts.draining} draining, ${s.counts.upgrading} upgrading, ${s.counts.verifying} verifying, ${s.counts.failed} failed; ${r.applied} action(s)`);
  }
  for (const a of r.plan?.actions ?? []) if (a.type !== 'evict') lines.push(`  ${a.type} ${'node' in a ? a.node : r.rollout}`);
  if (r.plan?.waiting !== undefined && r.applied === 0) lines.push(`${r.rollout}: nothing starts: ${r.plan.waiting}`);
  for (const b of r.blocked) lines.push(`  eviction of ${b.pod} on ${b.node} blocked: ${b.message}`);
  for (const e of r.errors) lines.push(`  error ${e.code}: ${e.message}`);
  return lines;
}

function log(args: GlobalArgs, event: OperatorEvent | { type: 'serving'; url: string }): void {
  if (args.json) {
    const value = event.type === 'error' ? { type: 'error', error: event.error.toJSON() } : event;
    process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), ...value })}\n`);
    return;
  }
  const at = new Date().toISOString();
  const lines = event.type === 'serving' ? [`serving /metrics, /healthz and /readyz on ${event.url}`]
    : event.type === 'leading' ? ['leading: reconciling OSUpgrades']
    : event.type === 'following' ? [`not leading: ${event.holder ? `${event.holder} holds the lease` : 'waiting for the lease'}`]
    : event.type === 'error' ? [`error ${event.error.code}: ${event.error.message}`]
    : event.reports.flatMap(describeReport);
  for (const line of lines) process.stderr.write(`${at} ${line}\n`);
}

const run: CommandModule<GlobalArgs, RunArgs> = {
  command: 'run',
  describe: 'Run the OSUpgrade operator until SIGTERM (one replica leads through a Lease)',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .option('kubeconfig', { type: 'string', description: 'kubeconfig file (default: in-cluster, then $KUBECONFIG or ~/.kube/config)' })
      .option('context', { type: 'string', description: 'kubeconfig context' })
      .option('namespace', { type: 'string', default: process.env['POD_NAMESPACE'] ?? 'kubeos-system', description: 'namespace of the leader-election Lease' })
      .option('lease-name', { type: 'string', default: 'kubeos-operator', description: 'name of the leader-election Lease' })
      .option('identity', { type: 'string', default: process.env['POD_NAME'] ?? hostname(), description: 'this replica in the Lease (the pod name)' })
      .option('interval', { type: 'number', default: 10, description: 'resync period in seconds (changes are seen at once through watches)' })
      .option('lease-duration', { type: 'number', default: 15, description: 'seconds another replica waits before taking over a silent leader' })
      .option('metrics-address', { type: 'string', default: '127.0.0.1:8080', description: 'HOST:PORT for /metrics (Prometheus), /healthz and /readyz; port 0 picks one; "off" serves none' })
      .option('dry-run', { type: 'boolean', description: 'plan once against the cluster, print the actions (--json for all of it), change nothing' })
      .example('kubeos operator run --kubeconfig ~/.kube/config', 'lead (or wait to lead) and roll every OSUpgrade out')
      .example('kubeos operator run --dry-run', 'what the next reconcile would do, and why nothing starts if nothing does')
      .example('kubeos operator run --metrics-address 0.0.0.0:8080 --json', 'as in deploy/operator-deployment.yaml: JSON log lines, probes and metrics on the pod IP') as Argv<RunArgs>,
  handler: async (args) => {
    if (!(args.interval > 0) || !(args['lease-duration'] >= 1)) {
      throw new KubeosError('E_USAGE', `--interval must be > 0 and --lease-duration >= 1, got ${args.interval} and ${args['lease-duration']}`);
    }
    // loaded on use: the Kubernetes client takes most of a second to import
    const { KubeApi } = await import('../../fleet/kube-api.js');
    const api = KubeApi.connect({ kubeconfig: args.kubeconfig, context: args.context }, args.identity);
    if (args['dry-run']) {
      const reports = await reconcileAll({ api, now: Date.now, dryRun: true });
      const value = reports.map((r) => ({ rollout: r.rollout, invalid: r.invalid?.toJSON(), actions: r.plan?.actions ?? [], waiting: r.plan?.waiting ?? null, status: r.plan?.status }));
      printResult(args, value, () => reports.map((r) => [...describeReport({ ...r, applied: r.plan?.actions.length ?? 0 })].join('\n') || `${r.rollout}: nothing to do (${r.plan?.status.phase ?? 'invalid'})`).join('\n') || 'no OSUpgrades');
      return;
    }
    const abort = new AbortController();
    const stop = () => abort.abort();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    // loaded on use, like the Kubernetes client: every other command starts without prom-client
    const { OperatorMetrics } = await import('../operator-metrics.js');
    const { serveHealth } = await import('../serve-health.js');
    const metrics = new OperatorMetrics(args.identity);
    const health: HealthState = { lastLoopAt: Date.now(), apiReachable: false };
    const intervalMs = args.interval * 1000;
    const tickMs = Math.min(intervalMs, (args['lease-duration'] * 1000) / 3);
    const server = args['metrics-address'] === 'off'
      ? undefined
      : await serveHealth(args['metrics-address'], metrics, health, Math.max(60_000, 10 * tickMs));
    if (server !== undefined) log(args, { type: 'serving', url: server.url });
    try {
      await runOperator({
        api,
        namespace: args.namespace,
        leaseName: args['lease-name'],
        identity: args.identity,
        intervalMs,
        leaseDurationSeconds: Math.round(args['lease-duration']),
        signal: abort.signal,
        onEvent: (event) => {
          metrics.observe(event);
          log(args, event);
        },
        heartbeat: (apiReachable) => Object.assign(health, { lastLoopAt: Date.now(), apiReachable }),
      });
    } finally {
      await server?.close();
    }
  },
};

export const operatorCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'operator <command>',
  describe: 'The Kubernetes operator that rolls OSUpgrades out across the fleet',
  builder: (y) => y.command(run).demandCommand(1, 'name a subcommand: kubeos operator run'),
  handler: () => {},
};
