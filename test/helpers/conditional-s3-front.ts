/**
 * What s3rver lacks and AWS S3 (and MinIO, R2) do: conditional writes. An HTTP front on 127.0.0.1
 * that passes every request to a real s3rver and evaluates a PUT's If-Match / If-None-Match
 * itself, one PUT per key at a time, answering 412 PreconditionFailed as S3 does. It is an
 * EMULATION of that one server feature, not a fake of S3: the objects live in s3rver.
 *
 * `holdPuts: n` holds conditional PUTs until n have arrived, then lets them through in arrival
 * order, so a test can make two publishers race for certain.
 */
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface ConditionalFront {
  endpoint: string;
  /** Every conditional PUT the front let through: key and body. */
  written: Array<{ key: string; body: Buffer }>;
  /** Conditional PUTs refused with 412. */
  refused: number;
  stop(): Promise<void>;
}

function forward(target: URL, req: IncomingMessage, body: Buffer | undefined, res: ServerResponse): Promise<number> {
  return new Promise((resolve, reject) => {
    const upstream = request({ host: target.hostname, port: target.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
      answer.on('end', () => resolve(answer.statusCode ?? 502));
    });
    upstream.on('error', reject);
    if (body === undefined) req.pipe(upstream);
    else upstream.end(body);
  });
}

/** The ETag s3rver holds for the object at `path`, or undefined when there is none. */
function headETag(target: URL, path: string, headers: IncomingMessage['headers']): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    // an anonymous HEAD: the buckets tests use allow public reads
    const { host } = headers;
    const head = request({ host: target.hostname, port: target.port, method: 'HEAD', path, headers: host === undefined ? {} : { host } }, (answer) => {
      answer.resume();
      resolve(answer.statusCode === 200 ? String(answer.headers.etag ?? '') : undefined);
    });
    head.on('error', reject);
    head.end();
  });
}

export async function startConditionalFront(s3Endpoint: string, options: { holdPuts?: number } = {}): Promise<ConditionalFront> {
  const target = new URL(s3Endpoint);
  const written: ConditionalFront['written'] = [];
  let refused = 0;
  let queue: Promise<void> = Promise.resolve();
  const held: Array<() => void> = [];
  let holding = options.holdPuts ?? 0;

  const server: Server = createServer((req, res) => {
    const ifMatch = req.headers['if-match'];
    const ifNoneMatch = req.headers['if-none-match'];
    if (req.method !== 'PUT' || (ifMatch === undefined && ifNoneMatch === undefined)) {
      forward(target, req, undefined, res).catch(() => res.destroy());
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks);
      const path = (req.url ?? '').split('?')[0]!;
      const run = async () => {
        const etag = await headETag(target, path, req.headers);
        const ok = ifNoneMatch === '*' ? etag === undefined : etag !== undefined && etag === ifMatch;
        if (!ok) {
          refused++;
          res.writeHead(412, { 'content-type': 'application/xml' });
          res.end('<?xml version="1.0" encoding="UTF-8"?><Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message></Error>');
          return;
        }
        if ((await forward(target, req, body, res)) === 200) written.push({ key: path, body });
      };
      const release = () => {
        // one conditional PUT per key at a time: the check and the write are one step
        queue = queue.then(run).catch(() => {
          res.destroy();
        });
      };
      if (holding > 0) {
        held.push(release);
        if (held.length >= holding) {
          holding = 0;
          for (const go of held.splice(0)) go();
        }
      } else {
        release();
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    written,
    get refused() {
      return refused;
    },
    stop: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
