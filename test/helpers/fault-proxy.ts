/**
 * A FAULT-INJECTING PROXY in front of the real API server, for what the real server cannot be made
 * to do on cue (a 500 on one particular patch, a watch that drops). It serves TLS with the API
 * server's own certificate (valid for 127.0.0.1) and forwards every request, credentials included,
 * to the real server unless a fault matches it first.
 */
import { EventEmitter } from 'node:events';
import { readFile } from 'node:fs/promises';
import { createServer, request, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { ControlPlane } from '../../scripts/kube/control-plane.js';

export interface Fault {
  method: string;
  path: RegExp;
  status: number;
  /** How many matching requests fail; each match uses one. */
  times: number;
  /** Only requests sent with this fieldManager query parameter. */
  fieldManager?: string;
  /** Let this many matching requests through first. */
  after?: number;
}

export class FaultProxy {
  readonly faults: Fault[] = [];
  /** Requests the proxy failed on purpose. */
  readonly injected: Array<{ method: string; path: string; status: number }> = [];
  /** Every request it saw; 'change' on `activity` after each, so tests can wait on them. */
  readonly seen: Array<{ method: string; path: string; watch: boolean }> = [];
  readonly activity = new EventEmitter();
  private server: Server | undefined;
  url = '';

  constructor(private readonly plane: ControlPlane) {}

  async start(): Promise<string> {
    const pki = join(this.plane.dir, 'pki');
    const ca = await readFile(this.plane.caFile);
    const upstream = new URL(this.plane.url);
    this.server = createServer({ cert: await readFile(join(pki, 'serving.crt')), key: await readFile(join(pki, 'serving.key')) }, (req, res) => {
      const url = new URL(req.url ?? '/', 'https://proxy');
      this.seen.push({ method: req.method ?? '', path: url.pathname, watch: url.searchParams.get('watch') === 'true' });
      this.activity.emit('change');
      const matching = this.faults.find((f) => f.times > 0 && f.method === req.method && f.path.test(url.pathname) && (f.fieldManager === undefined || url.searchParams.get('fieldManager') === f.fieldManager));
      const fault = matching !== undefined && (matching.after ?? 0) > 0 ? undefined : matching;
      if (matching !== undefined && fault === undefined) matching.after = (matching.after ?? 0) - 1;
      if (fault !== undefined) {
        fault.times--;
        this.injected.push({ method: req.method ?? '', path: url.pathname, status: fault.status });
        req.resume();
        res.writeHead(fault.status, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', reason: 'InternalError', code: fault.status, message: 'fault injected by the test proxy' }));
        return;
      }
      const forward = request({
        host: upstream.hostname,
        port: upstream.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: upstream.host },
        ca,
      }, (upstreamRes) => {
        res.writeHead(upstreamRes.statusCode ?? 502, upstreamRes.headers);
        upstreamRes.pipe(res);
      });
      forward.on('error', () => res.destroy());
      res.on('close', () => forward.destroy());
      req.pipe(forward);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, '127.0.0.1', resolve));
    this.url = `https://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this.url;
  }

  /** Ends every open connection, watches included: what a dropped connection looks like to a client. */
  dropConnections(): void {
    this.server?.closeAllConnections();
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
