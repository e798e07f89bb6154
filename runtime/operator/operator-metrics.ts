/**
 * The operator's Prometheus metrics (prom-client), fed from the operator's own events, so the
 * reconcile loop knows nothing about them: nodes per phase and rollout, node failures by reason,
 * drain durations, reconcile durations and errors, and whether this replica holds the lease.
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { nodePhases } from '../fleet/node-protocol.js';
import type { OperatorEvent } from './run-operator.js';

export class OperatorMetrics {
  readonly registry = new Registry();
  private readonly nodes: Gauge<'rollout' | 'phase'>;
  private readonly configNodes: Gauge<'osconfig' | 'phase'>;
  private readonly failures: Counter<'rollout' | 'reason'>;
  private readonly drainSeconds: Histogram<'rollout'>;
  private readonly reconcileSeconds: Histogram;
  private readonly errors: Counter<'code'>;
  private readonly leader: Gauge<'identity'>;
  private readonly known = new Set<string>();

  constructor(private readonly identity: string) {
    collectDefaultMetrics({ register: this.registry, prefix: 'kubeos_operator_' });
    this.nodes = new Gauge({ name: 'kubeos_rollout_nodes', help: 'Selected nodes of an OSUpgrade per phase, as of the last reconcile', labelNames: ['rollout', 'phase'], registers: [this.registry] });
    this.configNodes = new Gauge({ name: 'kubeos_osconfig_nodes', help: 'Selected nodes of an OSConfig per phase, as of the last reconcile', labelNames: ['osconfig', 'phase'], registers: [this.registry] });
    this.failures = new Counter({ name: 'kubeos_node_failures_total', help: 'Nodes this replica marked failed, by reason', labelNames: ['rollout', 'reason'], registers: [this.registry] });
    this.drainSeconds = new Histogram({
      name: 'kubeos_drain_duration_seconds', help: 'From cordon to the last pod gone, per drained node', labelNames: ['rollout'],
      buckets: [1, 5, 15, 30, 60, 120, 300, 600, 1800], registers: [this.registry],
    });
    this.reconcileSeconds = new Histogram({ name: 'kubeos_reconcile_duration_seconds', help: 'One reconcile pass over every OSUpgrade', buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [this.registry] });
    this.errors = new Counter({ name: 'kubeos_operator_errors_total', help: 'Failed API calls and other errors, by error code', labelNames: ['code'], registers: [this.registry] });
    this.leader = new Gauge({ name: 'kubeos_operator_leader', help: '1 while this replica holds the leader-election Lease', labelNames: ['identity'], registers: [this.registry] });
    this.leader.set({ identity }, 0);
  }

  observe(event: OperatorEvent): void {
    switch (event.type) {
      case 'leading':
        this.leader.set({ identity: this.identity }, 1);
        return;
      case 'following':
        this.leader.set({ identity: this.identity }, 0);
        return;
      case 'error':
        this.errors.inc({ code: event.error.code });
        return;
      case 'reconciled': {
        this.reconcileSeconds.observe(event.seconds);
        const seen = new Set<string>();
        const gauge = (kind: string, rollout: string, phase: string, value?: number) => {
          const labels = kind === 'OSConfig' ? { osconfig: rollout, phase } : { rollout, phase };
          const target = kind === 'OSConfig' ? this.configNodes : this.nodes;
          if (value === undefined) (target as Gauge<string>).remove(labels);
          else (target as Gauge<string>).set(labels, value);
        };
        for (const report of event.reports) {
          for (const error of report.errors) this.errors.inc({ code: error.code });
          const counts = report.plan?.status.counts;
          if (counts !== undefined) {
            seen.add(`${report.kind}/${report.rollout}`);
            for (const phase of nodePhases) gauge(report.kind, report.rollout, phase, counts[phase]);
          }
          if (report.kind === 'OSConfig') continue;
          for (const action of report.appliedActions) {
            if (action.type === 'mark-failed') this.failures.inc({ rollout: report.rollout, reason: action.record.reason ?? 'Failed' });
            if (action.type === 'set-desired-version') this.drainSeconds.observe({ rollout: report.rollout }, Math.max(0, (action.record.since - action.drainStarted) / 1000));
          }
        }
        // a rollout that was deleted drops out of the gauge
        for (const key of this.known) {
          if (seen.has(key)) continue;
          const [kind, rollout] = [key.slice(0, key.indexOf('/')), key.slice(key.indexOf('/') + 1)];
          for (const phase of nodePhases) gauge(kind, rollout, phase);
        }
        this.known.clear();
        for (const key of seen) this.known.add(key);
        return;
      }
    }
  }
}
