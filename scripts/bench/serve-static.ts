/**
 * A static-file HTTP server on 127.0.0.1 in a process of its own (`busybox httpd -f`), so that
 * neither kubeos nor the floor it is compared with shares a CPU thread with the server, and both
 * download from the same server in the same run.
 */
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { execa, type ResultPromise } from 'execa';
import { findTool } from '../../runtime/core/exec.js';

export interface StaticServer {
  base: string;
  close: () => Promise<void>;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port }, () => {
      socket.destroy();
      resolve(true);
    });
    socket.on('error', () => resolve(false));
  });
}

export interface ServeOptions {
  /** Append busybox's `-vv` log (one `url:` and one `response:` line a request) to this file. */
  log?: string;
}

export async function serveStatic(dir: string, options: ServeOptions = {}): Promise<StaticServer> {
  const busybox = await findTool('busybox');
  if (busybox === undefined) throw new Error('the bench serves files with busybox httpd: install busybox-static (scripts/install-deps.sh)');
  // the port is free when asked and taken a moment later: another process may get there first
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const verbose = options.log === undefined ? [] : ['-vv'];
    const stderr = options.log === undefined ? 'ignore' as const : { file: options.log, append: true };
    const child: ResultPromise = execa(busybox, ['httpd', '-f', ...verbose, '-p', `127.0.0.1:${port}`, '-h', dir], { reject: false, stdin: 'ignore', buffer: false, stdout: 'ignore', stderr });
    let exited = false;
    void child.then(() => { exited = true; });
    for (let i = 0; i < 250 && !exited; i++) {
      if (await accepts(port)) {
        return {
          base: `http://127.0.0.1:${port}`,
          close: async () => {
            child.kill('SIGTERM');
            await child;
          },
        };
      }
      await sleep(20);
    }
    child.kill('SIGKILL');
    await child;
  }
  throw new Error('busybox httpd did not start listening on 127.0.0.1');
}
