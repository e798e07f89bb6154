/**
 * Leader election through a coordination.k8s.io Lease, like client-go's: the holder renews it;
 * another replica takes it over only after it has seen the same record unchanged for a whole lease
 * duration (its own clock, so clock skew between nodes does not matter); every write carries the
 * resourceVersion it read, so of two replicas racing for the lease exactly one wins.
 */
import { KubeosError } from '../core/errors.js';
import type { KubeApi, LeaseRecord } from '../fleet/kube-api.js';

export interface LeaderElectorOptions {
  api: KubeApi;
  namespace: string;
  name: string;
  identity: string;
  durationSeconds: number;
  now: () => number;
}

export class LeaderElector {
  private observed: { key: string; at: number } | undefined;
  /** Until when (ms, own clock) this replica may act; 0 when it does not hold the lease. */
  private validUntil = 0;
  /** The holder the lease named when this replica last read it. */
  holder: string | undefined;

  constructor(private readonly options: LeaderElectorOptions) {}

  isLeader(): boolean {
    return this.options.now() < this.validUntil;
  }

  /** For write paths: throws E_LEADERSHIP_LOST once the lease may have passed to another replica. */
  assertLeader(): void {
    if (!this.isLeader()) {
      throw new KubeosError('E_LEADERSHIP_LOST', `${this.options.identity} no longer holds lease ${this.options.namespace}/${this.options.name}`, {
        hint: 'another replica may be acting; this one stops writing until it wins the lease again',
      });
    }
  }

  /** Acquires or renews the lease; true when this replica leads. */
  async tryAcquireOrRenew(): Promise<boolean> {
    const { api, namespace, name, identity, durationSeconds, now } = this.options;
    const started = now();
    const current = await api.readLease(namespace, name);
    this.holder = current?.holder;
    const write = async (lease: Omit<LeaseRecord, 'resourceVersion'>, expected: string | undefined) => {
      const ok = await api.writeLease(namespace, name, lease, expected);
      // Count validity from before the read: the lease cannot be older than that.
      this.validUntil = ok ? started + durationSeconds * 1000 : 0;
      // lost the race: whoever won is the holder now (only for the log, so a failed read is no loss)
      this.holder = ok ? lease.holder : (await api.readLease(namespace, name).catch(() => undefined))?.holder;
      return ok;
    };

    if (current === undefined) {
      return write({ holder: identity, acquireTime: started, renewTime: started, durationSeconds, transitions: 0 }, undefined);
    }
    if (current.holder === identity) {
      return write({ ...current, renewTime: started, durationSeconds }, current.resourceVersion);
    }
    const key = `${current.holder}/${current.renewTime}/${current.resourceVersion}`;
    if (this.observed?.key !== key) this.observed = { key, at: started };
    const free = current.holder === undefined || current.holder === '';
    const expired = started >= this.observed.at + current.durationSeconds * 1000;
    if (!free && !expired) {
      this.validUntil = 0;
      return false;
    }
    return write({ holder: identity, acquireTime: started, renewTime: started, durationSeconds, transitions: current.transitions + 1 }, current.resourceVersion);
  }

  /** Gives the lease up on a clean shutdown so the next replica need not wait for it to expire. */
  async release(): Promise<void> {
    const { api, namespace, name, identity } = this.options;
    if (!this.isLeader()) return;
    this.validUntil = 0;
    const current = await api.readLease(namespace, name);
    if (current?.holder !== identity) return;
    await api.writeLease(namespace, name, { ...current, holder: '', durationSeconds: 1 }, current.resourceVersion);
  }
}
