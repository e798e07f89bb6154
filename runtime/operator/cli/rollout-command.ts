/** `kubeos rollout status NAME`: where an OSUpgrade (or `osconfig/NAME`, an OSConfig) stands, once or following it with --watch. */
import type { Argv, CommandModule } from 'yargs';
import { KubeosError } from '../../core/errors.js';
import type { OSUpgradeObject, OSUpgradeStatus } from '../../fleet/osupgrade.js';
import { formatAge } from '../../cli/format-age.js';
import { makeProgress, printResult, type GlobalArgs } from '../../cli/output.js';

interface StatusArgs extends GlobalArgs {
  name: string;
  kubeconfig?: string;
  context?: string;
  watch?: boolean;
}

/**
 * When the rest should be done at the pace so far: nodes finished (done or failed) since the
 * OSUpgrade was created. Undefined before the first node finishes, or once nothing is left.
 */
export function estimateRemainingMs(object: OSUpgradeObject, now: number): number | undefined {
  const c = object.status?.counts;
  const created = object.metadata?.creationTimestamp === undefined ? Number.NaN : new Date(object.metadata.creationTimestamp).getTime();
  if (c === undefined || Number.isNaN(created)) return undefined;
  const finished = c.done + c.failed;
  const left = c.total - finished;
  if (finished === 0 || left === 0 || now <= created) return undefined;
  return ((now - created) / finished) * left;
}

/** "[#####.....] 412/1000 on 1.4.0 · 3 upgrading · 1 failed · Progressing · ETA 2h10m" */
export function renderProgressLine(object: OSUpgradeObject, now = Date.now()): string {
  const s = object.status;
  const version = (object.spec as { version?: string } | undefined)?.version ?? '?';
  if (s?.counts === undefined) return `${object.metadata?.name}: ${s?.phase ?? 'not reconciled yet'} (target ${version})`;
  const c = s.counts;
  const width = 30;
  const filled = c.total === 0 ? width : Math.round(((c.done + c.failed) / c.total) * width);
  const parts = [`[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${c.done}/${c.total} on ${s.targetVersion ?? version}`];
  for (const key of ['draining', 'upgrading', 'verifying', 'failed'] as const) if (c[key] > 0) parts.push(`${c[key]} ${key}`);
  parts.push(s.phase ?? '');
  const eta = s.phase === 'Progressing' ? estimateRemainingMs(object, now) : undefined;
  if (eta !== undefined) parts.push(`ETA ${formatAge(eta)}`);
  return parts.join(' · ');
}

/** The node table: failed and in-flight nodes first (as status lists them). */
export function renderTable(object: OSUpgradeObject, now = Date.now()): string {
  const s = object.status;
  const rows = [['NODE', 'PHASE', 'AGENT', 'PROGRESS', 'VERSION', 'AGE', 'REASON']];
  for (const n of s?.nodes ?? []) {
    const since = n.since === undefined ? Number.NaN : Date.parse(n.since);
    rows.push([n.name, n.phase, n.agentState ?? '', n.progress ?? '', n.currentVersion ?? '', Number.isNaN(since) ? '' : formatAge(now - since), [n.reason, n.message].filter(Boolean).join(': ')]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  const lines = rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ').trimEnd());
  if ((s?.nodesOmitted ?? 0) > 0) lines.push(`(${s?.nodesOmitted} more nodes not listed)`);
  const conditions = (s?.conditions ?? []).filter((c) => c.status === 'True').map((c) => `${c.type}: ${c.reason}${c.message ? ` (${c.message})` : ''}`);
  return [...lines, '', ...conditions, renderProgressLine(object, now)].join('\n');
}

function outcome(object: OSUpgradeObject): 'done' | 'failed' | 'running' {
  const s = object.status as Partial<OSUpgradeStatus> | undefined;
  if (s === undefined || s.observedGeneration !== object.metadata?.generation) return 'running';
  if (s.phase === 'Complete') return 'done';
  if (s.phase === 'Invalid' || s.conditions?.some((c) => c.type === 'FailureBudgetExceeded' && c.status === 'True')) return 'failed';
  return 'running';
}

/** `osconfig/NAME` names an OSConfig, `NAME` or `osupgrade/NAME` an OSUpgrade (kubectl's TYPE/NAME). */
export function parseRolloutName(raw: string): { kind: 'osupgrade' | 'osconfig'; name: string } {
  const match = /^(osupgrades?|osconfigs?)\/(.+)$/.exec(raw);
  if (match === null) {
    if (raw.includes('/')) throw new KubeosError('E_USAGE', `${raw}: give an OSUpgrade name, osupgrade/NAME or osconfig/NAME`, { details: { name: raw } });
    return { kind: 'osupgrade', name: raw };
  }
  return { kind: match[1]!.startsWith('osconfig') ? 'osconfig' : 'osupgrade', name: match[2]! };
}

function failure(object: OSUpgradeObject, kind: 'osupgrade' | 'osconfig'): KubeosError {
  const name = object.metadata?.name ?? '';
  if (object.status?.phase === 'Invalid') {
    return new KubeosError(kind === 'osconfig' ? 'E_OSCONFIG_INVALID' : 'E_OSUPGRADE_INVALID', `${name}: ${object.status.conditions?.[0]?.message ?? 'invalid spec'}`, { hint: `kubectl get ${kind} ${name} -o yaml` });
  }
  return new KubeosError('E_ROLLOUT_FAILED', `${name}: paused after ${object.status?.counts?.failed ?? '?'} failed node(s)`, {
    hint: `see the failed nodes above; resume with: kubectl patch ${kind} ${name} --type merge -p '{"spec":{"paused":false}}'`,
    details: { status: object.status },
  });
}

const status: CommandModule<GlobalArgs, StatusArgs> = {
  command: 'status <name>',
  describe: 'Show an OSUpgrade (or osconfig/NAME, an OSConfig): per-node table and a progress line; --watch follows it to the end',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .positional('name', { type: 'string', demandOption: true, description: 'the OSUpgrade, or osconfig/NAME' })
      .option('kubeconfig', { type: 'string', description: 'kubeconfig file (default: $KUBECONFIG or ~/.kube/config)' })
      .option('context', { type: 'string', description: 'kubeconfig context' })
      .option('watch', { alias: 'w', type: 'boolean', description: 'follow the rollout; exit 0 when complete, 1 when the failure budget pauses it' })
      .example('$0 rollout status fleet-1-4-0 --watch', 'per-node phases and progress until the rollout ends; the exit code says how')
      .example('$0 rollout status osconfig/node-tuning', 'the same for an OSConfig') as Argv<StatusArgs>,
  handler: async (args) => {
    const { kind, name } = parseRolloutName(args.name);
    // loaded on use: the Kubernetes client takes most of a second to import
    const { KubeApi } = await import('../../fleet/kube-api.js');
    const api = KubeApi.connect({ kubeconfig: args.kubeconfig, context: args.context }, 'kubeos-cli');
    const read = () => (kind === 'osconfig' ? api.readOSConfig(name) : api.readOSUpgrade(name));
    let object = await read();
    if (args.watch) {
      const progress = makeProgress(args);
      const abort = new AbortController();
      process.once('SIGINT', () => abort.abort());
      let changed: () => void = () => {};
      const restart = async (): Promise<void> => {
        if (abort.signal.aborted) return;
        await api.watch({ kind: kind === 'osconfig' ? 'osconfigs' : 'osupgrades', name }, (event) => {
          if (event.type === 'ADDED' || event.type === 'MODIFIED') {
            object = event.object as OSUpgradeObject;
            changed();
          }
        }, () => setTimeout(() => void restart(), 1000).unref(), abort.signal).catch(() => setTimeout(() => void restart(), 1000).unref());
      };
      // the first progress line means the watch is open: nothing after it goes unseen
      await restart();
      while (!abort.signal.aborted && outcome(object) === 'running') {
        progress(renderProgressLine(object));
        // a watch event, or a poll in case the watch is down
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, 5000);
          changed = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        if (!abort.signal.aborted) object = await read().catch(() => object);
      }
      abort.abort();
      progress('done');
    }
    printResult(args, { name, kind, spec: object.spec, status: object.status ?? null }, () => renderTable(object));
    if (args.watch && outcome(object) === 'failed') throw failure(object, kind);
  },
};

interface UndoArgs extends GlobalArgs {
  name: string;
  kubeconfig?: string;
  context?: string;
  'dry-run'?: boolean;
}

const undo: CommandModule<GlobalArgs, UndoArgs> = {
  command: 'undo <name>',
  describe: 'Roll the nodes an OSUpgrade upgraded back to the version they ran before, through the same rollout (maxUnavailable, windows, drain)',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .positional('name', { type: 'string', demandOption: true, description: 'the OSUpgrade' })
      .option('kubeconfig', { type: 'string', description: 'kubeconfig file (default: $KUBECONFIG or ~/.kube/config)' })
      .option('context', { type: 'string', description: 'kubeconfig context' })
      .option('dry-run', { type: 'boolean', description: 'say what it would do, change nothing' })
      .example('kubeos rollout undo fleet-1-4-0', 'back to the version the upgraded nodes ran; kubeos rollout status fleet-1-4-0 --watch follows it')
      .epilogue('The previous version comes from the nodes\' own records, and must still be a release the signed channel lists.') as Argv<UndoArgs>,
  handler: async (args) => {
    const { KubeApi } = await import('../../fleet/kube-api.js');
    const { readNodeView } = await import('../../fleet/node-protocol.js');
    const { previousVersion } = await import('../plan-rollout.js');
    const { rollBackPatch } = await import('../../fleet/osupgrade.js');
    const api = KubeApi.connect({ kubeconfig: args.kubeconfig, context: args.context }, 'kubeos-cli');
    const object = await api.readOSUpgrade(args.name);
    const version = (object.spec as { version?: unknown } | undefined)?.version;
    if (typeof version !== 'string') throw new KubeosError('E_OSUPGRADE_INVALID', `${args.name} has no spec.version`);
    const back = previousVersion(args.name, version, (await api.listNodes()).map(readNodeView));
    if ('error' in back) throw new KubeosError('E_USAGE', `${args.name}: ${back.error}`, { details: { rollout: args.name, version } });
    const result = { name: args.name, from: version, to: back.version, nodes: back.nodes, dryRun: args['dry-run'] === true };
    if (!args['dry-run']) {
      await api.patchOSUpgrade(args.name, rollBackPatch(version, back.version));
    }
    printResult(args, result, () => `${args.name}: ${args['dry-run'] ? 'would roll' : 'rolling'} ${back.nodes.length} node(s) back from ${version} to ${back.version} (${back.nodes.join(', ')}); follow it with: kubeos rollout status ${args.name} --watch`);
  },
};

export const rolloutCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'rollout <command>',
  describe: 'Follow fleet rollouts (OSUpgrade and OSConfig objects), and undo an OSUpgrade',
  builder: (y) => y.command(status).command(undo).demandCommand(1, 'name a subcommand: kubeos rollout status NAME, or kubeos rollout undo NAME'),
  handler: () => {},
};
