/**
 * What a host does: GET a channel index, verify it, then GET the bundle it names and stream it
 * through the verifying reader. Plain HTTP(S), so any static server or public bucket can serve.
 */
import { Readable } from 'node:stream';
import { KubeosError } from '../errors.js';
import { readBundle, type OpenedBundle, type ReadBundleOptions } from '../bundle/read-bundle.js';
import { verifyChannel, type ChannelSigned, type VerifyChannelOptions } from './channel-index.js';
import { resolveBundleUrl } from './layout.js';

const maxIndexBytes = 1024 * 1024;
const indexTimeoutMs = 30_000;

export interface FetchedChannel {
  signed: ChannelSigned;
  /** Absolute URL of the bundle the index names. */
  bundleUrl: string;
}

/** undici says only "fetch failed"; the reason (refused, no such host, too many redirects) is in its cause chain. */
export function fetchFailure(error: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = error; e instanceof Error && parts.length < 4; e = (e as { cause?: unknown }).cause) {
    const code = (e as { code?: unknown }).code;
    const text = typeof code === 'string' && !e.message.includes(code) ? `${e.message} (${code})` : e.message;
    if (!parts.includes(text)) parts.push(text);
  }
  return parts.length === 0 ? String(error) : parts.join(': ');
}

async function get(url: string, signal: AbortSignal | undefined): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(url, { signal, redirect: 'follow' });
  } catch (cause) {
    if (signal?.aborted && signal.reason instanceof KubeosError) throw signal.reason;
    throw new KubeosError('E_FETCH', `GET ${url} failed: ${fetchFailure(cause)}`, { cause, details: { url } });
  }
  if (response.status !== 200) {
    await response.body?.cancel();
    throw new KubeosError('E_FETCH', `GET ${url} answered HTTP ${response.status}`, { details: { url, status: response.status } });
  }
  return response;
}

export async function fetchChannel(url: string, options: VerifyChannelOptions & { signal?: AbortSignal; timeoutMs?: number }): Promise<FetchedChannel> {
  // one deadline for the whole index, body included (a server trickling a byte a second is cut off);
  // an own timer, as AbortSignal.timeout combined with AbortSignal.any can be collected on Node 20
  const timeoutMs = options.timeoutMs ?? indexTimeoutMs;
  const deadline = new AbortController();
  const timer = setTimeout(() => deadline.abort(new KubeosError('E_FETCH', `GET ${url}: no complete channel index within ${timeoutMs / 1000} s`, { details: { url, timeoutMs } })), timeoutMs);
  const onAbort = () => deadline.abort(options.signal?.reason);
  options.signal?.addEventListener('abort', onAbort, { once: true });
  try {
    return await readChannel(url, options, deadline.signal);
  } catch (error) {
    if (deadline.signal.aborted && deadline.signal.reason instanceof KubeosError) throw deadline.signal.reason;
    throw error;
  } finally {
    clearTimeout(timer);
    options.signal?.removeEventListener('abort', onAbort);
  }
}

async function readChannel(url: string, options: VerifyChannelOptions, signal: AbortSignal): Promise<FetchedChannel> {
  const response = await get(url, signal);
  const length = Number(response.headers.get('content-length') ?? 0);
  if (length > maxIndexBytes) {
    await response.body?.cancel();
    throw new KubeosError('E_CHANNEL_INVALID', `channel index is ${length} bytes, at most ${maxIndexBytes} allowed`);
  }
  // the bound holds while reading too: a body sent without Content-Length is never buffered past it
  const parts: Uint8Array[] = [];
  let size = 0;
  for await (const part of (response.body ?? []) as AsyncIterable<Uint8Array>) {
    size += part.length;
    if (size > maxIndexBytes) {
      await response.body?.cancel().catch(() => {});
      throw new KubeosError('E_CHANNEL_INVALID', `channel index at ${url} is over ${maxIndexBytes} bytes: refused while reading`, { details: { url, limit: maxIndexBytes } });
    }
    parts.push(part);
  }
  const body = Buffer.concat(parts);
  const signed = verifyChannel(body, options);
  return { signed, bundleUrl: resolveBundleUrl(url, signed.bundle.path) };
}

/** Refuses a bundle that is not the one the channel index describes (`version`: the release chosen from it). */
export function checkBundleMatchesChannel(bundle: Pick<OpenedBundle, 'manifest'>, signed: ChannelSigned, version = signed.version): void {
  const m = bundle.manifest;
  const expected = { version, compatible: signed.compatible, os: signed.os, arch: signed.arch };
  const mismatched = (['version', 'compatible', 'os', 'arch'] as const).filter((key) => m[key] !== expected[key]);
  if (mismatched.length > 0) {
    throw new KubeosError('E_BUNDLE_INVALID', `bundle does not match its channel index: ${mismatched.map((k) => `${k} ${m[k]} vs ${expected[k]}`).join(', ')}`, {
      details: { mismatched },
    });
  }
}

/**
 * Streams the bundle a verified channel index names. The returned payload is the verified,
 * decompressed image (see readBundle); the manifest is checked against the index first.
 */
export async function fetchBundle(channel: FetchedChannel, options: ReadBundleOptions): Promise<OpenedBundle> {
  const response = await get(channel.bundleUrl, options.signal);
  const length = response.headers.get('content-length');
  if (length !== null && Number(length) !== channel.signed.bundle.size) {
    await response.body?.cancel();
    throw new KubeosError('E_BUNDLE_INVALID', `bundle at ${channel.bundleUrl} is ${length} bytes, the channel says ${channel.signed.bundle.size}`);
  }
  if (response.body === null) throw new KubeosError('E_FETCH', `GET ${channel.bundleUrl} returned no body`);
  const source = Readable.fromWeb(response.body as import('node:stream/web').ReadableStream<Uint8Array>);
  const bundle = await readBundle(source, options);
  try {
    checkBundleMatchesChannel(bundle, channel.signed);
  } catch (error) {
    bundle.payload.destroy();
    throw error;
  }
  return bundle;
}
