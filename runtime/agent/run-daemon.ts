/**
 * `kubeos agent daemon`: commit a trying slot once the system is up, then poll the channel on an
 * interval with jitter and upgrade when a newer version appears. One log line per state change.
 */
import { setTimeout as delay } from 'node:timers/promises';
import { isKubeosError } from '../core/errors.js';
import type { AgentConfig } from './agent-config.js';
import { readState, writeState } from './agent-state.js';
import { commit, status } from './commit-rollback-status.js';
import { upgrade } from './upgrade.js';

export interface DaemonOptions {
  channel?: string;
  signal: AbortSignal;
  log: (line: string) => void;
  /** Stop after this many polls (tests); forever when undefined. */
  polls?: number;
  random?: () => number;
}

/** Commits a trying boot and records a fallback; run once at start by the daemon and by boot hooks. */
export async function settleBoot(config: AgentConfig, log: (line: string) => void): Promise<void> {
  const now = await status(config);
  if (now.bootKind === 'trying' && now.slots[now.booted].state === 'trying') {
    const result = await commit(config);
    log(`committed slot ${result.slot} (version ${result.version})`);
  } else if (now.fellBack && now.lastUpgrade && now.lastUpgrade.result === 'installed') {
    const state = await readState(config.stateDir);
    if (state.lastUpgrade) state.lastUpgrade = { ...state.lastUpgrade, result: 'fell-back', at: new Date().toISOString() };
    await writeState(config.stateDir, state);
    log(`slot ${now.lastUpgrade.slot} (version ${now.lastUpgrade.version}) did not come up; back on slot ${now.booted}`);
  }
}

export async function runDaemon(config: AgentConfig, options: DaemonOptions): Promise<void> {
  const channel = options.channel ?? config.channel;
  const random = options.random ?? Math.random;
  await settleBoot(config, options.log);
  if (config.updates === 'cluster') {
    // one updater per node: on a cluster node only a rollout (agent daemon --kubernetes) upgrades
    options.log('updates come from the cluster (agent config updates: cluster): not following a channel');
    return;
  }
  if (channel === undefined) {
    options.log('no channel configured: nothing to poll');
    return;
  }
  options.log(`polling ${channel} every ${config.pollSeconds}s (+ up to ${config.jitterSeconds}s jitter)`);
  let last = '';
  for (let poll = 0; options.polls === undefined || poll < options.polls; poll++) {
    let line: string;
    // logged once the slot is made bootable, before the reboot command runs: a reboot that ends
    // this process at once must not take the line with it
    let installed: string | undefined;
    try {
      const result = await upgrade(config, {
        channel,
        signal: options.signal,
        reboot: true,
        onInstalled: (done) => {
          installed = `installed ${done.version} into slot ${done.slot}; rebooting`;
          options.log(installed);
        },
      });
      line = result.kind === 'up-to-date' ? `up to date (${result.version})` : (installed ?? `installed ${result.version} into slot ${result.slot}; rebooting`);
    } catch (error) {
      if (options.signal.aborted) return;
      line = `upgrade failed: ${isKubeosError(error) ? `${error.code} ${error.message}` : String(error)}`;
    }
    if (line !== last && line !== installed) options.log(line);
    last = line;
    if (options.polls !== undefined && poll + 1 >= options.polls) return;
    try {
      await delay((config.pollSeconds + random() * config.jitterSeconds) * 1000, undefined, { signal: options.signal });
    } catch {
      return;
    }
  }
}
