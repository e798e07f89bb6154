/**
 * The node side of the handshake, for `kubeos agent daemon --kubernetes`: watch this node's Node
 * for kubeos.io/desired-version, run the injected upgrade, and report state and version back in the
 * annotations the agent owns (see node-protocol.ts). The disk work itself is the caller's.
 */
import { asKubeosError, KubeosError } from '../core/errors.js';
import type { KubeApi } from '../fleet/kube-api.js';
import { agentConfigReportPatch, agentReportPatch, annotations, configAnnotations, configKeys, failedAgentStates, upgradeKeys, type AgentReport, type AgentState, type NodeLike, type RolloutKeys } from '../fleet/node-protocol.js';

/** What the agent knows about this node from its own state (boot environment, slots). */
export interface LocalStatus {
  currentVersion: string;
  /** How the last attempt went, if there was one (e.g. `fell-back` after a failed trial boot). */
  state?: AgentState;
  /** The version that attempt was for. */
  stateVersion?: string;
  lastError?: string;
}

/** Reports a step; `bytes` while installing (the agent rate-limits what it writes to the Node). */
export type UpgradeProgress = (state: 'downloading' | 'installing' | 'rebooting', bytes?: { done: number; total: number }) => Promise<void>;

/**
 * `rebooting`: the node is going down into the new slot; the agent on the next boot reports the
 * rest from its LocalStatus (`committed` or `fell-back`).
 */
export type UpgradeOutcome =
  | { state: 'committed'; currentVersion: string }
  | { state: 'failed'; error: string }
  | { state: 'fell-back'; currentVersion: string; error: string }
  | { state: 'rebooting' };

/**
 * The OSConfig side: `status` says which configuration is in force (its digest as currentVersion)
 * and how the last attempt went; `apply` reads the OSConfig `source`, checks its configuration
 * still has `digest`, and applies it (`rebooting` when its kernel arguments need a trial boot).
 */
export interface ConfigHandler {
  status: () => Promise<LocalStatus>;
  apply: (source: string, digest: string, progress: UpgradeProgress, signal: AbortSignal) => Promise<UpgradeOutcome>;
}

export interface NodeAgentOptions {
  api: KubeApi;
  nodeName: string;
  /** Reads this node's LocalStatus; called once at start. */
  status: () => Promise<LocalStatus>;
  upgrade: (version: string, channel: string, progress: UpgradeProgress, signal: AbortSignal, options: { allowDowngrade: boolean }) => Promise<UpgradeOutcome>;
  /** Follow OSConfigs too (kubeos.io/desired-config). */
  config?: ConfigHandler;
  signal: AbortSignal;
  /** Re-read the Node this often in case a watch event was missed. */
  resyncMs?: number;
  /** Write install progress to the Node at most this often (default 2 s). */
  progressEveryMs?: number;
  onEvent?: (event: NodeAgentEvent) => void;
}

export type NodeAgentEvent =
  | { type: 'reported'; report: AgentReport; kind?: 'config' }
  | { type: 'upgrade-started'; version: string; channel: string }
  | { type: 'upgrade-ended'; outcome: UpgradeOutcome }
  | { type: 'config-started'; digest: string; source: string }
  | { type: 'config-ended'; outcome: UpgradeOutcome }
  /** Looked at its Node and decided to do nothing, and why (on every watch event and resync). */
  | { type: 'idle'; why: string; desiredVersion: string | undefined }
  | { type: 'error'; error: KubeosError };

export type AgentDecision = { type: 'none'; why: string } | { type: 'upgrade'; version: string; channel: string; allowDowngrade: boolean };

/**
 * Pure: what to do given the Node's annotations and the local status, for an upgrade (`keys`
 * upgradeKeys) or an OSConfig (configKeys, where the version is a configuration's digest).
 */
export function decideAgentAction(node: NodeLike, local: LocalStatus, busy: boolean, keys: RolloutKeys = upgradeKeys): AgentDecision {
  const a = node.metadata?.annotations ?? {};
  const what = keys === upgradeKeys ? 'version' : 'configuration';
  const desired = a[keys.desired];
  if (desired === undefined || desired === '') return { type: 'none', why: `no desired ${what}` };
  if (desired === local.currentVersion) return { type: 'none', why: `already running the desired ${what}` };
  if (busy) return { type: 'none', why: 'an upgrade or a configuration is being applied' };
  if (local.state === 'rebooting' && local.stateVersion === desired) return { type: 'none', why: 'waiting for the reboot into it' };
  // An attempt at this version already failed: the operator decides what happens next, not us.
  if (local.stateVersion === desired && local.state !== undefined && failedAgentStates.includes(local.state)) {
    return { type: 'none', why: `the last attempt at ${desired} ended ${local.state}` };
  }
  const source = a[keys.source];
  if (keys !== upgradeKeys && source === undefined) return { type: 'none', why: `${keys.source} is not set` };
  return { type: 'upgrade', version: desired, channel: source ?? 'stable', allowDowngrade: keys.allowDowngrade !== undefined && a[keys.allowDowngrade] === 'true' };
}

export async function runNodeAgent(options: NodeAgentOptions): Promise<void> {
  const { api, nodeName, signal } = options;
  const emit = options.onEvent ?? (() => {});
  const resyncMs = options.resyncMs ?? 30_000;
  const progressEveryMs = options.progressEveryMs ?? 2000;
  const local: LocalStatus = { ...(await options.status()) };
  /** Resolves after `ms`, or at once when the agent is stopped. */
  const wait = (ms: number) => new Promise<void>((resolve) => {
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
  /** The one change running at a time: an upgrade or a configuration. */
  /**
   * Views of the node are numbered when asked for (a read) or received (a watch event): a read that
   * began before the view that started a job may answer after it with the older state, and must
   * not be taken for the operator withdrawing the target.
   */
  let views = 0;
  let job: { kind: 'upgrade' | 'config'; version: string; abort: AbortController; done: Promise<void>; view: number; resourceVersion: string | undefined } | undefined;
  // etcd's resourceVersions are integers that grow with every write: where both are, they order
  // two views exactly (a watch event can lag a later read); otherwise the view numbers do
  const newer = (view: number, resourceVersion: string | undefined, than: { view: number; resourceVersion: string | undefined }) =>
    resourceVersion !== undefined && than.resourceVersion !== undefined && /^\d+$/.test(resourceVersion) && /^\d+$/.test(than.resourceVersion)
      ? BigInt(resourceVersion) > BigInt(than.resourceVersion)
      : view > than.view;
  const localConfig: LocalStatus | undefined = options.config === undefined ? undefined : { ...(await options.config.status()) };

  // Reports go out one at a time, in the order made, so a progress write in flight never lands
  // after the state that follows it; a state that did not get through is sent again at each resync.
  let chain: Promise<void> = Promise.resolve();
  const unsent = new Map<'upgrade' | 'config', AgentReport>();
  const report = (r: AgentReport, kind: 'upgrade' | 'config' = 'upgrade'): Promise<void> => {
    const sent = chain.then(async () => {
      try {
        await api.patchNode(nodeName, kind === 'config' ? agentConfigReportPatch(r) : agentReportPatch(r));
      } catch (error) {
        if (r.progress === undefined) unsent.set(kind, r);
        throw error;
      }
      if (r.progress === undefined) unsent.delete(kind);
      emit(kind === 'config' ? { type: 'reported', report: r, kind } : { type: 'reported', report: r });
    });
    chain = sent.catch(() => {});
    return sent;
  };

  const runUpgrade = async (kind: 'upgrade' | 'config', version: string, channel: string, allowDowngrade: boolean, abort: AbortController) => {
    const state = kind === 'config' ? localConfig! : local;
    emit(kind === 'config' ? { type: 'config-started', digest: version, source: channel } : { type: 'upgrade-started', version, channel });
    // byte counts go up at most every progressEveryMs (and on the last byte): a Node is no log
    let lastBytesAt = 0;
    const progress: UpgradeProgress = async (step, bytes) => {
      if (bytes !== undefined) {
        const now = Date.now();
        if (bytes.done < bytes.total && now - lastBytesAt < progressEveryMs) return;
        lastBytesAt = now;
      }
      await report({ state: step, stateVersion: version, currentVersion: state.currentVersion, ...(bytes === undefined ? {} : { progress: bytes }) }, kind);
    };
    let outcome: UpgradeOutcome;
    try {
      await progress(kind === 'config' ? 'installing' : 'downloading');
      outcome = kind === 'config'
        ? await options.config!.apply(channel, version, progress, abort.signal)
        : await options.upgrade(version, channel, progress, abort.signal, { allowDowngrade });
    } catch (error) {
      outcome = { state: 'failed', error: error instanceof Error ? error.message : String(error) };
    }
    emit(kind === 'config' ? { type: 'config-ended', outcome } : { type: 'upgrade-ended', outcome });
    if (outcome.state === 'rebooting') {
      Object.assign(state, { state: 'rebooting', stateVersion: version });
      await report({ state: 'rebooting', stateVersion: version, currentVersion: state.currentVersion }, kind);
      return;
    }
    if (outcome.state === 'committed') Object.assign(state, { currentVersion: outcome.currentVersion, state: 'committed', stateVersion: version, lastError: undefined });
    else if (outcome.state === 'fell-back') Object.assign(state, { currentVersion: outcome.currentVersion, state: 'fell-back', stateVersion: version, lastError: outcome.error });
    else Object.assign(state, { state: 'failed', stateVersion: version, lastError: outcome.error });
    await report({ state: state.state!, stateVersion: version, currentVersion: state.currentVersion, ...(state.lastError === undefined ? {} : { lastError: state.lastError }) }, kind);
  };

  const consider = (node: NodeLike, view: number) => {
    const a = node.metadata?.annotations ?? {};
    const desired = a[annotations.desiredVersion];
    // The operator withdrew or changed the target before we rebooted (seen in a newer view): stop.
    if (job !== undefined && newer(view, node.metadata?.resourceVersion, job) && job.version !== (job.kind === 'config' ? a[configAnnotations.desired] : desired)) job.abort.abort();
    let kind: 'upgrade' | 'config' = 'upgrade';
    let decision = decideAgentAction(node, local, job !== undefined);
    if (decision.type !== 'upgrade' && localConfig !== undefined && local.state !== 'rebooting') {
      const forConfig = decideAgentAction(node, localConfig, job !== undefined, configKeys);
      if (forConfig.type === 'upgrade') {
        kind = 'config';
        decision = forConfig;
      }
    }
    if (decision.type !== 'upgrade') {
      emit({ type: 'idle', why: decision.why, desiredVersion: desired });
      return;
    }
    const abort = new AbortController();
    const own = { kind, version: decision.version, abort, done: Promise.resolve(), view, resourceVersion: node.metadata?.resourceVersion };
    job = own;
    own.done = runUpgrade(kind, decision.version, decision.channel, decision.allowDowngrade, abort)
      .catch((error: unknown) => emit({ type: 'error', error: asKubeosError(error, 'E_KUBERNETES') }))
      .finally(() => {
        if (job === own) job = undefined;
      });
  };

  // What this boot knows goes up first, so the operator never reads a stale state.
  const initial: AgentReport = { state: local.state ?? 'idle', currentVersion: local.currentVersion };
  if (local.stateVersion !== undefined) initial.stateVersion = local.stateVersion;
  if (local.lastError !== undefined) initial.lastError = local.lastError;
  const initialConfig: AgentReport | undefined = localConfig === undefined ? undefined : { state: localConfig.state ?? 'idle', ...(localConfig.currentVersion === '' ? {} : { currentVersion: localConfig.currentVersion }) };
  if (initialConfig !== undefined && localConfig?.stateVersion !== undefined) initialConfig.stateVersion = localConfig.stateVersion;
  if (initialConfig !== undefined && localConfig?.lastError !== undefined) initialConfig.lastError = localConfig.lastError;
  // The API server may be unreachable for a while after a reboot: keep trying, the operator waits.
  for (let delay = 200; !signal.aborted; delay = Math.min(delay * 2, resyncMs)) {
    try {
      await report(initial);
      if (initialConfig !== undefined) await report(initialConfig, 'config');
      break;
    } catch (error) {
      emit({ type: 'error', error: asKubeosError(error, 'E_KUBERNETES') });
      await wait(delay);
    }
  }

  let watching = false;
  const watch = (resourceVersion: string | undefined) => {
    if (signal.aborted || watching) return;
    watching = true;
    api.watch({ kind: 'nodes', name: nodeName, ...(resourceVersion === undefined ? {} : { resourceVersion }) }, (event) => {
      if (event.type === 'ADDED' || event.type === 'MODIFIED') consider(event.object as NodeLike, ++views);
    }, () => {
      watching = false;
    }, signal).catch((error: unknown) => {
      watching = false;
      emit({ type: 'error', error: asKubeosError(error, 'E_KUBERNETES') });
    });
  };

  while (!signal.aborted) {
    for (const [kind, r] of job === undefined ? [...unsent] : []) {
      await report(r, kind).catch((error: unknown) => emit({ type: 'error', error: asKubeosError(error, 'E_KUBERNETES') }));
    }
    try {
      const view = ++views;
      const node = await api.readNode(nodeName);
      consider(node, view);
      // the watch starts where the read left off, so a change made between the two is not missed
      watch(node.metadata?.resourceVersion);
    } catch (error) {
      emit({ type: 'error', error: asKubeosError(error, 'E_KUBERNETES') });
      watch(undefined);
    }
    await wait(resyncMs);
  }
  job?.abort.abort();
  await job?.done;
}
