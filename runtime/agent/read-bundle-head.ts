/**
 * A bundle's header (manifest, signature, payload tar header) read by Range requests, for an
 * install that may go by delta: the manifest is verified exactly as in a full read, and nothing
 * past the header is asked for. The first request takes 32 KiB (firstHeaderReadBytes: a small
 * image's whole header); a bigger manifest (a big image's chunk index) costs one more request for
 * exactly the rest.
 * Anything unexpected (a server without ranges, a header that does not parse, a header that takes
 * longer than the idle timeout to arrive) gives undefined:
 * the install then reads the bundle from the start as ever, and that read reports what is wrong.
 */
import { Readable } from 'node:stream';
import type { TrustedKeys } from '../core/crypto/keys.js';
import { readHeaderPrefix } from '../core/bundle/measure-bundle-header.js';
import { readBundle, type OpenedBundle } from '../core/bundle/read-bundle.js';
import { fetchRange } from './fetch-resumable.js';

export interface BundleHead {
  /** The verified manifest; its payload stream holds nothing and is to be destroyed. */
  bundle: OpenedBundle;
  /** Bytes received. */
  bytes: number;
}

export async function readBundleHead(url: string, options: { trustedKeys: TrustedKeys; compatible: string; signal: AbortSignal; idleMs: number }): Promise<BundleHead | undefined> {
  const { idleMs } = options;
  // a header is small: one that takes longer than a stalled connection would is not waited for.
  // A timer of our own, not AbortSignal.timeout: that signal is weakly held and may be collected
  // before it fires.
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), idleMs);
  const signal = AbortSignal.any([options.signal, stop.signal]);
  try {
    const read = await readHeaderPrefix((offset, length) => fetchRange(url, offset, length, { signal, idleMs }));
    if (read === undefined) return undefined;
    const bundle = await readBundle(Readable.from([read.prefix.subarray(0, read.headerBytes)]), { trustedKeys: options.trustedKeys, compatible: options.compatible, signal });
    return { bundle, bytes: read.prefix.length };
  } catch {
    options.signal.throwIfAborted();
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}
