/**
 * `kubeos operator run`: leader election, then reconcile every OSUpgrade on a timer and whenever a
 * Node or an OSUpgrade changes (watches), until the signal aborts. Reports go to a callback; the
 * CLI decides what to print.
 */
import { performance } from 'node:perf_hooks';
import { asKubeosError, KubeosError } from '../core/errors.js';
import { LeaderElector } from './elect-leader.js';
import type { KubeApi } from '../fleet/kube-api.js';
import { reconcileAll, syncNodes, type ReconcileReport } from './reconcile-rollout.js';

export interface OperatorOptions {
  api: KubeApi;
  /** Namespace of the Lease. */
  namespace: string;
  leaseName: string;
  identity: string;
  /** Resync period. */
  intervalMs: number;
  leaseDurationSeconds?: number;
  /** Wait this long after a watch event before reconciling, so a burst of changes is one reconcile. */
  debounceMs?: number;
  now?: () => number;
  signal: AbortSignal;
  /** Give the lease up when stopping (default true); false behaves like a crash. */
  releaseOnExit?: boolean;
  onEvent?: (event: OperatorEvent) => void;
  /** Called at every turn of the loop with whether the API server answered (for /healthz and /readyz). */
  heartbeat?: (apiReachable: boolean) => void;
}

export type OperatorEvent =
  | { type: 'leading' }
  | { type: 'following'; holder?: string }
  | { type: 'reconciled'; reports: ReconcileReport[]; seconds: number }
  | { type: 'error'; error: KubeosError };


export async function runOperator(options: OperatorOptions): Promise<void> {
  const { api, signal } = options;
  const now = options.now ?? Date.now;
  const durationSeconds = options.leaseDurationSeconds ?? 15;
  const debounceMs = options.debounceMs ?? 500;
  const emit = options.onEvent ?? (() => {});
  const heartbeat = options.heartbeat ?? (() => {});
  const elector = new LeaderElector({ api, namespace: options.namespace, name: options.leaseName, identity: options.identity, durationSeconds, now });
  const recorded = new Set<string>();
  // Renew well within the lease duration even when the resync interval is long.
  const tick = Math.min(options.intervalMs, (durationSeconds * 1000) / 3);

  let wake: (() => void) | undefined;
  let dirty = true;
  const poke = () => {
    dirty = true;
    wake?.();
  };
  let watches: AbortController | undefined;
  const startWatches = () => {
    watches = new AbortController();
    const own = watches;
    for (const kind of ['nodes', 'osupgrades', 'osconfigs'] as const) {
      const start = (): void => {
        if (own.signal.aborted) return;
        api.watch({ kind }, () => poke(), () => {
          // the server closed the watch (they do, every few minutes): reopen after a pause
          if (!own.signal.aborted) setTimeout(start, Math.min(1000, options.intervalMs)).unref();
        }, own.signal).catch(() => {
          if (!own.signal.aborted) setTimeout(start, Math.min(1000, options.intervalMs)).unref();
        });
      };
      start();
    }
  };
  const stopWatches = () => {
    watches?.abort();
    watches = undefined;
  };

  // undefined until the first answer, so a replica that starts as a follower says so too
  let leading: boolean | undefined;
  let lastResync = 0;
  try {
    while (!signal.aborted) {
      try {
        const leader = await elector.tryAcquireOrRenew();
        heartbeat(true);
        if (leader !== leading) {
          leading = leader;
          if (leader) {
            emit({ type: 'leading' });
            startWatches();
            dirty = true;
          } else {
            emit({ type: 'following', holder: elector.holder });
            stopWatches();
          }
        }
        if (leader && (dirty || now() - lastResync >= options.intervalMs)) {
          dirty = false;
          lastResync = now();
          const reconcile = { api, now, assertLeader: () => elector.assertLeader(), recorded };
          const started = performance.now();
          const reports = await reconcileAll(reconcile);
          emit({ type: 'reconciled', reports, seconds: (performance.now() - started) / 1000 });
          const live = (kind: ReconcileReport['kind']) => new Set(reports.filter((r) => r.kind === kind).map((r) => r.rollout));
          for (const error of await syncNodes(reconcile, { upgrades: live('OSUpgrade'), configs: live('OSConfig') })) emit({ type: 'error', error });
          // something moved: look again soon rather than at the next resync
          // (blocked evictions are retried at the resync interval, not in a tight loop)
          if (reports.some((r) => r.applied > 0)) dirty = true;
        }
      } catch (error) {
        const failure = asKubeosError(error, 'E_KUBERNETES');
        heartbeat(failure.code !== 'E_KUBERNETES' || failure.details?.['status'] !== undefined);
        emit({ type: 'error', error: failure });
      }
      if (signal.aborted) break;
      const wait = dirty && leading === true ? debounceMs : tick;
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          signal.removeEventListener('abort', done);
          resolve();
        };
        const timer = setTimeout(done, wait);
        wake = () => {
          clearTimeout(timer);
          wake = undefined;
          // debounce: let the burst of watch events settle
          setTimeout(done, debounceMs);
        };
        signal.addEventListener('abort', done, { once: true });
      });
      wake = undefined;
    }
  } finally {
    stopWatches();
    if (options.releaseOnExit !== false) await elector.release().catch(() => {});
  }
}
