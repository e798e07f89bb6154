/**
 * The operator's HTTP endpoints for Prometheus and the kubelet's probes:
 * - /metrics: the OperatorMetrics registry;
 * - /healthz: 200 while the reconcile loop keeps turning (a loop stuck longer than `stuckAfterMs` is unhealthy);
 * - /readyz: 200 once the last call to the API server went through (leader or not), 503 before.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeosError } from '../core/errors.js';
import type { OperatorMetrics } from './operator-metrics.js';

export interface HealthState {
  /** When the loop last turned (ms). */
  lastLoopAt: number;
  /** Whether the last API call of the loop went through. */
  apiReachable: boolean;
}

export interface HealthServer {
  url: string;
  close(): Promise<void>;
}

/** "HOST:PORT" (port 0 picks a free one). */
export function parseListenAddress(value: string): { host: string; port: number } {
  const match = /^(?<host>\[[0-9a-fA-F:]+\]|[^:]+):(?<port>\d{1,5})$/.exec(value);
  const port = Number(match?.groups?.['port']);
  if (match === null || port > 65535) {
    throw new KubeosError('E_USAGE', `--metrics-address ${JSON.stringify(value)}: expected HOST:PORT, such as 127.0.0.1:8080 or 0.0.0.0:8080`, { details: { value } });
  }
  return { host: match.groups!['host']!.replace(/^\[|\]$/g, ''), port };
}

export async function serveHealth(address: string, metrics: OperatorMetrics, state: HealthState, stuckAfterMs: number, now: () => number = Date.now): Promise<HealthServer> {
  const { host, port } = parseListenAddress(address);
  const server: Server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const reply = (code: number, body: string, type = 'text/plain; charset=utf-8') => {
      res.writeHead(code, { 'content-type': type });
      res.end(body);
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return reply(405, 'only GET\n');
    if (path === '/metrics') {
      metrics.registry.metrics().then((text) => reply(200, text, metrics.registry.contentType), (error: unknown) => reply(500, `${String(error)}\n`));
      return;
    }
    if (path === '/healthz' || path === '/livez') {
      const idle = now() - state.lastLoopAt;
      return idle <= stuckAfterMs ? reply(200, 'ok\n') : reply(503, `the reconcile loop has not turned for ${Math.round(idle / 1000)} s\n`);
    }
    if (path === '/readyz') return state.apiReachable ? reply(200, 'ok\n') : reply(503, 'the API server has not answered yet\n');
    reply(404, 'try /metrics, /healthz or /readyz\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => {
      reject(new KubeosError('E_USAGE', `cannot listen on ${address}: ${error.code === 'EADDRINUSE' ? 'the port is in use' : error.message}`, {
        cause: error,
        hint: 'pick another with --metrics-address HOST:PORT',
      }));
    });
    server.listen(port, host, () => resolve());
  });
  const bound = server.address() as AddressInfo;
  const shown = bound.family === 'IPv6' ? `[${bound.address}]` : bound.address;
  return {
    url: `http://${shown}:${bound.port}`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
