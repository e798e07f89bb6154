/** `kubeos agent daemon --kubernetes`: the node side of the operator's handshake, driving this host's upgrade. */
import { KubeosError, isKubeosError } from '../core/errors.js';
import { channelNamePattern } from '../core/channel/layout.js';
import { runCommand } from '../core/exec.js';
import { KubeApi } from '../fleet/kube-api.js';
import { runNodeAgent, type LocalStatus } from './run-node-agent.js';
import type { AgentConfig } from './agent-config.js';
import { status } from './commit-rollback-status.js';
import { upgrade } from './upgrade.js';
import { configDigest, readConfigRollout } from '../fleet/osconfig.js';
import { applyConfig, configStatus } from './os-config-apply.js';

/**
 * `hostNamespaces`: the agent runs in a privileged DaemonSet pod with hostPID, so the reboot
 * command runs in PID 1's namespaces (nsenter), where the host's own reboot lives.
 */
export function rebootCommand(config: AgentConfig, hostNamespaces: boolean): string[] {
  return hostNamespaces ? ['nsenter', '--target', '1', '--mount', '--uts', '--ipc', '--net', '--pid', '--', ...config.reboot] : config.reboot;
}

export async function runKubernetesAgent(config: AgentConfig, options: { nodeName: string | undefined; kubeconfig?: string; hostNamespaces?: boolean; signal: AbortSignal; log: (line: string) => void }): Promise<void> {
  if (!options.nodeName) throw new KubeosError('E_USAGE', '--kubernetes needs --node-name or $NODE_NAME');
  let lastWhy: string | undefined;
  const api = KubeApi.connect({ kubeconfig: options.kubeconfig }, `kubeos-agent/${options.nodeName}`);
  await runNodeAgent({
    api,
    nodeName: options.nodeName,
    signal: options.signal,
    status: async (): Promise<LocalStatus> => {
      const s = await status(config);
      const last = s.lastUpgrade;
      if (s.fellBack && last) return { currentVersion: s.version, state: 'fell-back', stateVersion: last.version, lastError: `slot ${last.slot} did not come up` };
      if (last?.result === 'committed') return { currentVersion: s.version, state: 'committed', stateVersion: last.version };
      if (last?.result === 'failed') return { currentVersion: s.version, state: 'failed', stateVersion: last.version, lastError: last.error };
      return { currentVersion: s.version };
    },
    upgrade: async (version, channel, progress, signal, { allowDowngrade }) => {
      // the cluster names a channel; the server is this host's own, never one the cluster picks
      if (!channelNamePattern.test(channel)) return { state: 'failed', error: `E_USAGE: kubeos.io/desired-channel ${JSON.stringify(channel)} is not a channel name` };
      try {
        const result = await upgrade(config, {
          channel, version, allowDowngrade, signal, reboot: false,
          onBytes: (done, total) => {
            void progress('installing', { done, total }).catch(() => {});
          },
        });
        if (result.kind === 'up-to-date') return { state: 'committed', currentVersion: result.version };
        await progress('rebooting');
        await runCommand(rebootCommand(config, options.hostNamespaces === true), { timeoutMs: 60_000 });
        return { state: 'rebooting' };
      } catch (error) {
        return { state: 'failed', error: isKubeosError(error) ? `${error.code}: ${error.message}` : String(error) };
      }
    },
    config: {
      status: async (): Promise<LocalStatus> => {
        // unreadable configuration state must not stop the upgrades: it is reported instead
        const s = await configStatus(config, options.log).catch((error: unknown) => (isKubeosError(error) ? error : new KubeosError('E_STATE_CORRUPT', String(error))));
        if (s instanceof KubeosError) return { currentVersion: '', state: 'failed', lastError: `${s.code}: ${s.message}` };
        const current = s.committed > 0 ? configDigest(s.config) : '';
        if (s.trying !== undefined && s.tryingConfig !== undefined) return { currentVersion: current, state: 'trying', stateVersion: configDigest(s.tryingConfig) };
        if (s.last === undefined || s.lastConfig === undefined) return { currentVersion: current };
        const about = configDigest(s.lastConfig);
        if (s.last.result === 'rolled-back') return { currentVersion: current, state: 'fell-back', stateVersion: about, lastError: `generation ${s.last.generation} rolled back: ${s.last.reason ?? 'unknown reason'}` };
        return { currentVersion: current, state: 'committed', stateVersion: about };
      },
      apply: async (source, digest, progress) => {
        const before = await configStatus(config);
        const current = before.committed > 0 ? configDigest(before.config) : '';
        try {
          // the configuration comes from the OSConfig the operator named, and must still be the one it meant
          const object = await api.readOSConfig(source);
          const wanted = readConfigRollout(object);
          if (wanted.digest !== digest) {
            return { state: 'failed', error: `E_CONFIG_CHANGED: OSConfig ${source} now holds ${wanted.digest}, not the ${digest} this node was asked for; nothing was changed` };
          }
          // the configuration as written (apply reads it with the same model; modes are strings there)
          const result = await applyConfig(config, (object.spec as { config?: unknown }).config, `OSConfig ${source}`, options.log, { reboot: false });
          if (result.kind !== 'trying') return { state: 'committed', currentVersion: digest };
          await progress('rebooting');
          await runCommand(rebootCommand(config, options.hostNamespaces === true), { timeoutMs: 60_000 });
          return { state: 'rebooting' };
        } catch (error) {
          const message = isKubeosError(error) ? `${error.code}: ${error.message}` : String(error);
          if (isKubeosError(error, 'E_CONFIG_ROLLED_BACK')) return { state: 'fell-back', currentVersion: current, error: message };
          return { state: 'failed', error: message };
        }
      },
    },
    onEvent: (event) => {
      // the agent decides on every watch event and resync: log a decision only when it changes
      if (event.type === 'idle') {
        if (event.why !== lastWhy) options.log(`idle: ${event.why}`);
        lastWhy = event.why;
        return;
      }
      lastWhy = undefined;
      options.log(event.type === 'error' ? `error ${event.error.code}: ${event.error.message}` : `${event.type} ${JSON.stringify('report' in event ? event.report : 'outcome' in event ? event.outcome : event)}`);
    },
  });
}
