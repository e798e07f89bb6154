/**
 * `kubeos agent ...`: the host-side commands. Thin: parse, call runtime/agent, print. Each handler
 * loads what it runs (the install path, the daemon, OS configuration) when it runs: `agent status`
 * on a host starts without parsing the download and bundle code, and nothing here loads an S3 or
 * Kubernetes client (only `daemon --kubernetes` loads the latter).
 */
import type { Argv, CommandModule } from 'yargs';
import { makeProgress, printResult, type GlobalArgs } from '../../cli/output.js';
import { KubeosError } from '../../core/errors.js';
import { defaultConfigPath, loadAgentConfig } from '../agent-config.js';
import { commit, rollback, status } from '../commit-rollback-status.js';
import type { TransferReport, UpgradeResult } from '../upgrade.js';
import { readFile } from 'node:fs/promises';
import type { ConfigStatus } from '../os-config-apply.js';

const configCode = () => import('../os-config-apply.js');

interface AgentArgs extends GlobalArgs {
  config: string;
}

const withConfig = <T>(y: Argv<T>) => y.option('config', { type: 'string', default: defaultConfigPath, describe: 'Agent configuration (slots, boot environment, keys, channel)' });

const statusCommand: CommandModule<AgentArgs, AgentArgs> = {
  command: 'status',
  describe: 'Booted slot, what each slot holds and its state, the last upgrade, whether the last boot fell back, the OS configuration in force',
  builder: (y) => y.example('$0 agent status --json', 'the same as JSON, for health checks and scripts') as any,
  handler: async (args) => {
    const agent = await loadAgentConfig(args.config);
    const [{ configStatus }, { configDigest }] = await Promise.all([configCode(), import('../../fleet/osconfig.js')]);
    const s = await status(agent);
    // the slots are what status is for: unreadable configuration state is shown, not fatal
    const c = await configStatus(agent).catch((error: unknown) => (error instanceof KubeosError ? error : new KubeosError('E_STATE_CORRUPT', String(error))));
    const config = c instanceof KubeosError ? { error: { code: c.code, message: c.message } } : {
      committed: c.committed,
      ...(c.committed > 0 ? { digest: configDigest(c.config) } : {}),
      ...(c.trying === undefined ? {} : { trying: c.trying }),
      ...(c.last === undefined ? {} : { last: c.last }),
    };
    const configLine = c instanceof KubeosError ? `configuration: unreadable: ${c.code}: ${c.message}`
      : `configuration: ${c.committed === 0 ? 'none committed' : `generation ${c.committed} (${configDigest(c.config)})`}${c.trying === undefined ? '' : `, generation ${c.trying} on trial`}${c.last?.result === 'rolled-back' ? `; generation ${c.last.generation} was rolled back: ${c.last.reason ?? 'no reason recorded'}` : ''}`;
    printResult(args, { ...s, config }, () => [
      `booted slot ${s.booted} (${s.bootKind}), version ${s.version}, compatible ${s.compatible}${s.fellBack ? ' — FELL BACK: the last upgrade did not come up' : ''}`,
      ...(['A', 'B'] as const).map((slot) => {
        const x = s.slots[slot];
        return `  slot ${slot}: ${x.state}${x.triesLeft !== undefined ? ` (${x.triesLeft} tries left)` : ''}${x.version ? `, version ${x.version}` : ''}`;
      }),
      s.lastUpgrade ? `last upgrade: ${s.lastUpgrade.version} into slot ${s.lastUpgrade.slot}: ${s.lastUpgrade.result}${s.lastUpgrade.error ? ` (${s.lastUpgrade.error})` : ''} at ${s.lastUpgrade.at}` : 'last upgrade: none',
      configLine,
    ].join('\n'));
  },
};

interface UpgradeArgs extends AgentArgs {
  channel?: string;
  imageVersion?: string;
  bundle?: string;
  reboot: boolean;
  allowDowngrade: boolean;
}

const upgradeCommand: CommandModule<AgentArgs, UpgradeArgs> = {
  command: 'upgrade',
  describe: 'Verify a bundle, write it to the standby slot, and boot it next (with boot counting)',
  builder: (y) => y
    .option('channel', { type: 'string', describe: 'Channel name under the host\'s image server (default: the config\'s); the URL of an index also works' })
    // --image-version as on build and bundle create; --version, its first name, still works
    .version(false)
    .option('image-version', { type: 'string', alias: 'version', describe: 'Install exactly this release of the channel (it must be listed in the signed index)' })
    .option('bundle', { type: 'string', describe: 'URL or path of a bundle' })
    .option('reboot', { type: 'boolean', default: true, describe: 'Reboot into the new slot when done (--no-reboot to stay)' })
    .option('allow-downgrade', { type: 'boolean', default: false, describe: 'Install a version older than (or equal to) the running one' })
    .conflicts('channel', 'bundle')
    .example('$0 agent upgrade --channel stable', 'Install the newest release of channel stable')
    .example('$0 agent upgrade --channel stable --image-version 1.4.0', 'Install release 1.4.0, if the signed channel lists it')
    .example('$0 agent upgrade --bundle ./os-2.0.0.kubeos --no-reboot', 'Install a local bundle, reboot later') as any,
  handler: async (args) => {
    const config = await loadAgentConfig(args.config);
    const { upgrade } = await import('../upgrade.js');
    // an install is reported before the host reboots (stdout to a terminal or a file is written at once)
    let reported = false;
    const report = (result: UpgradeResult) => {
      reported = true;
      printResult(args, result, () => result.kind === 'up-to-date'
        ? `up to date: ${result.version}`
        : `installed ${result.version} into slot ${result.slot} (sha256 ${result.sha256}); ${result.rebooting ? 'rebooting' : 'it boots next (run reboot)'}\n${describeTransfer(result.transfer)}`);
    };
    const result = await upgrade(config, {
      channel: args.channel ?? (args.bundle === undefined ? config.channel : undefined),
      ...(args.imageVersion === undefined ? {} : { version: args.imageVersion }),
      bundle: args.bundle,
      reboot: args.reboot,
      allowDowngrade: args.allowDowngrade,
      onProgress: makeProgress(args),
      onInstalled: report,
    });
    if (!reported) report(result);
  },
};

function describeTransfer(t: TransferReport): string {
  const how = t.mode === 'delta'
    ? `delta: fetched ${t.fetchedBytes} bytes (${t.fetchedChunks} chunks${t.seedMismatches ? `, ${t.seedMismatches} of them because slot data no longer matched` : ''}), reused ${t.reusedBytes} bytes (${t.reusedChunks} chunks) from the booted slot`
    : `full bundle: fetched ${t.fetchedBytes} bytes`;
  return `  ${how}${t.fallback ? ` after the delta failed (${t.fallback.code}: ${t.fallback.message})` : t.reason ? ` (${t.reason})` : ''}`;
}

const commitCommand: CommandModule<AgentArgs, AgentArgs> = {
  command: 'commit',
  describe: 'Make the slot on trial the good slot (run after health checks pass)',
  builder: (y) => y.example('$0 agent commit', 'what the boot hook runs once /etc/kubeos/health.d passes on a trial boot') as any,
  handler: async (args) => {
    const result = await commit(await loadAgentConfig(args.config));
    printResult(args, result, () => result.kind === 'committed' ? `committed slot ${result.slot} (${result.version})` : `slot ${result.slot} (${result.version}) was already committed`);
  },
};

const rollbackCommand: CommandModule<AgentArgs, AgentArgs & { reboot: boolean }> = {
  command: 'rollback',
  describe: 'Boot the other slot, if it holds a committed image',
  builder: (y) => y.option('reboot', { type: 'boolean', default: true, describe: 'Reboot now (--no-reboot: at the next boot)' })
    .example('$0 agent rollback', 'back to the image committed before, now') as any,
  handler: async (args) => {
    const result = await rollback(await loadAgentConfig(args.config), { reboot: args.reboot });
    printResult(args, result, () => `slot ${result.slot} (${result.version ?? 'unknown version'}) boots next${result.rebooting ? '; rebooting' : ''}`);
  },
};

interface DaemonArgs extends AgentArgs {
  channel?: string;
  kubernetes: boolean;
  hostNamespaces: boolean;
  nodeName?: string;
  kubeconfig?: string;
}

const daemonCommand: CommandModule<AgentArgs, DaemonArgs> = {
  command: 'daemon',
  describe: 'Commit a healthy trial boot, then follow a channel (or the Node\'s desired version with --kubernetes)',
  builder: (y) => y
    .option('channel', { type: 'string', describe: 'Channel name (default: the config\'s)' })
    .option('kubernetes', { type: 'boolean', default: false, describe: 'Take the desired version from this Node\'s kubeos.io/desired-version annotation' })
    .option('node-name', { type: 'string', describe: 'This Node\'s name (with --kubernetes; default $NODE_NAME)' })
    .option('host-namespaces', { type: 'boolean', default: false, describe: 'Reboot through PID 1\'s namespaces (nsenter): for the agent DaemonSet (privileged, hostPID)' })
    .option('kubeconfig', { type: 'string', describe: 'Kubeconfig (default: in-cluster)' })
    .example('$0 agent daemon', 'a host that follows its channel: commit the trial boot, then poll and upgrade')
    .example('$0 agent daemon --kubernetes --kubeconfig /etc/kubeos/kubeconfig --node-name node-1', 'a cluster node: upgrade only when the operator asks (the DaemonSet adds --host-namespaces)') as any,
  handler: async (args) => {
    const config = await loadAgentConfig(args.config);
    const { runDaemon, settleBoot } = await import('../run-daemon.js');
    const controller = new AbortController();
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => controller.abort());
    // one line per decision; with --json one JSON object per line, as operator run --json writes
    const log = (line: string) => process.stdout.write(args.json
      ? `${JSON.stringify({ time: new Date().toISOString(), component: 'kubeos-agent', message: line })}\n`
      : `${new Date().toISOString()} kubeos-agent: ${line}\n`);
    if (!args.kubernetes) {
      await runDaemon(config, { channel: args.channel, signal: controller.signal, log });
      return;
    }
    if (config.updates !== 'cluster') {
      throw new KubeosError('E_USAGE', `this host upgrades itself from its channel (${args.config}: updates is "${config.updates}"); a cluster node must not have two updaters`, {
        hint: 'build cluster nodes with kubeos build --updates cluster, so only the operator starts upgrades',
        details: { updates: config.updates },
      });
    }
    const { runKubernetesAgent } = await import('../run-kubernetes-agent.js');
    await settleBoot(config, log);
    await runKubernetesAgent(config, { nodeName: args.nodeName ?? process.env['NODE_NAME'], kubeconfig: args.kubeconfig, hostNamespaces: args.hostNamespaces, signal: controller.signal, log });
  },
};

/** Step lines on stderr (the result goes to stdout), so CI logs show where an apply stopped. */
const configSteps = (args: GlobalArgs) => (line: string) => {
  if (!args.json) process.stderr.write(`${line}\n`);
};

function describeConfig(s: ConfigStatus): string {
  const c = s.config;
  return [
    `generation in force: ${s.committed === 0 ? 'none' : s.committed}${s.trying === undefined ? '' : ` (trying ${s.trying})`}`,
    `  sysctl: ${Object.keys(c.sysctl).length === 0 ? 'none' : Object.entries(c.sysctl).map(([k, v]) => `${k}=${v}`).join(', ')}`,
    `  files: ${c.files.length === 0 ? 'none' : c.files.map((f) => f.path).join(', ')}`,
    `  limits: ${c.limits.length === 0 ? 'none' : c.limits.length}`,
    s.last ? `last: generation ${s.last.generation} ${s.last.result}${s.last.reason ? ` (${s.last.reason})` : ''} at ${s.last.at}` : 'last: none',
    s.history.length > 0 ? `history: ${s.history.join(' → ')}` : '',
  ].filter((l) => l !== '').join('\n');
}

const configApply: CommandModule<AgentArgs, AgentArgs & { file: string; reboot: boolean }> = {
  command: 'apply <file>',
  describe: 'Apply an OS configuration (JSON: sysctl, files, limits, kernelArgs) as a new generation: health checks, then commit or restore',
  builder: (y) => y
    .positional('file', { type: 'string', describe: 'The configuration, a JSON file (- reads standard input)' })
    .option('reboot', { type: 'boolean', default: true, describe: 'When kernelArgs change: reboot into their trial at once (--no-reboot: at the next boot)' })
    .example('$0 agent config apply args.json', 'new kernel arguments: tried for bootTries boots, committed by the boot that passes its health checks, else GRUB boots the old ones')
    .example('$0 agent config apply node.json', 'sysctl and files from node.json, kept if /etc/kubeos/health.d passes') as any,
  handler: async (args) => {
    const config = await loadAgentConfig(args.config);
    let text: string;
    try {
      text = args.file === '-' ? await new Response(process.stdin as unknown as ReadableStream).text() : await readFile(args.file, 'utf8');
    } catch (error) {
      throw new KubeosError('E_USAGE', `cannot read ${args.file}: ${(error as NodeJS.ErrnoException).code ?? String(error)}`, { cause: error });
    }
    let input: unknown;
    try {
      input = JSON.parse(text);
    } catch (error) {
      throw new KubeosError('E_CONFIG_INVALID', `${args.file} is not JSON: ${(error as Error).message}`, { cause: error, hint: 'docs/agent.md shows a configuration' });
    }
    const { applyConfig } = await configCode();
    const result = await applyConfig(config, input, args.file, configSteps(args), { reboot: args.reboot });
    printResult(args, result, () => result.kind === 'unchanged' ? `generation ${result.generation} already holds this configuration`
      : result.kind === 'trying' ? `generation ${result.generation} is on trial: its kernel arguments are tried on the next boot${result.rebooting ? ' (rebooting)' : ' (run reboot)'}`
        : `committed generation ${result.generation}`);
  },
};

const configStatusCommand: CommandModule<AgentArgs, AgentArgs> = {
  command: 'status',
  describe: 'The configuration generation in force, the last attempt and the history',
  builder: (y) => y.example('$0 agent config status --json', 'committed and trying generations, and why the last one was rolled back') as any,
  handler: async (args) => {
    const { configStatus } = await configCode();
    const s = await configStatus(await loadAgentConfig(args.config), configSteps(args));
    printResult(args, s, () => describeConfig(s));
  },
};

const configRollbackCommand: CommandModule<AgentArgs, AgentArgs> = {
  command: 'rollback',
  describe: 'Go back to the configuration committed before the one in force (health checks again)',
  builder: (y) => y.example('$0 agent config rollback', 'the previous generation, tried and committed like a new one') as any,
  handler: async (args) => {
    const { configRollback } = await configCode();
    const result = await configRollback(await loadAgentConfig(args.config), configSteps(args));
    printResult(args, result, () => `committed generation ${result.generation} (the configuration before)`);
  },
};

const configCommitCommand: CommandModule<AgentArgs, AgentArgs> = {
  command: 'commit',
  describe: 'Commit the kernel arguments on trial in this boot (the boot hook runs it once the health checks pass)',
  builder: (y) => y.example('$0 agent config commit', 'in a boot hook, after the health checks, when /run/kubeos/config-boot says trying') as any,
  handler: async (args) => {
    const { commitConfigBoot } = await configCode();
    const result = await commitConfigBoot(await loadAgentConfig(args.config), configSteps(args));
    printResult(args, result, () => `committed generation ${result.generation}`);
  },
};

const configCommand: CommandModule<AgentArgs, AgentArgs> = {
  command: 'config <command>',
  describe: 'Node OS configuration as generations: apply, status, rollback, commit',
  builder: (y) => y.command(configApply).command(configStatusCommand).command(configRollbackCommand).command(configCommitCommand)
    .demandCommand(1, 'name a config command: apply FILE, status, rollback or commit') as any,
  handler: () => {},
};

export const agentCommand: CommandModule<GlobalArgs, AgentArgs> = {
  command: 'agent <command>',
  describe: 'On a host: status, upgrade, commit, rollback, daemon, config',
  builder: (y) => withConfig(y)
    .command(statusCommand)
    .command(upgradeCommand)
    .command(commitCommand)
    .command(rollbackCommand)
    .command(daemonCommand)
    .command(configCommand)
    .demandCommand(1, 'name an agent command: status, upgrade, commit, rollback, daemon or config') as any,
  handler: () => {},
};
