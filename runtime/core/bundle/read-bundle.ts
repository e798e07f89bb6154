/**
 * Reads a bundle from any byte stream (a file, an HTTP response) in one pass: the manifest and its
 * signature first, then the payload, decompressed by `zstd -d` and released chunk by chunk only
 * after each chunk matched the signed manifest. The agent writes that stream straight to a slot.
 */
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { isKubeosError, KubeosError } from '../errors.js';
import { startZstd, type ZstdChild } from './run-zstd.js';
import { parseSignature, verifySignature, type Signature } from '../crypto/signature.js';
import type { TrustedKeys } from '../crypto/keys.js';
import { HashTap } from './hash-tap.js';
import { OffThreadHashTap, StreamHasher } from './stream-hasher.js';
import {
  checkCompatible,
  manifestMember,
  maxManifestBytes,
  maxSignatureBytes,
  payloadMember,
  signatureMember,
  validateManifest,
  type BundleManifest,
} from './manifest.js';
import { ChunkHasher } from './chunk-hasher.js';
import type { ChunkPool } from './chunk-pool.js';
import { ChunkVerifier, PooledChunkVerifier } from './verify-chunks.js';

export interface ReadBundleOptions {
  trustedKeys: TrustedKeys;
  /** When given, a bundle for other hosts fails with E_INCOMPATIBLE before any payload is read. */
  compatible?: string;
  signal?: AbortSignal;
  /**
   * Check the chunk hashes only, not the sha256 of the whole compressed and uncompressed payload:
   * for a caller that verifies what it wrote itself (the agent reads the slot back). Every byte
   * released is still covered by a signed chunk hash.
   */
  chunksOnly?: boolean;
  /**
   * Hash the chunks on a worker thread and release them in buffers from this pool (implies
   * chunksOnly unless chunksOnly is false: then the sha256 of the whole image and of the compressed
   * payload are checked too, each hashed on a worker of its own). The reader owns each chunk it
   * receives until it gives it back to the pool; input waits while the pool is empty.
   */
  chunkPool?: ChunkPool;
  /**
   * Start zstd and the hashing worker as soon as the signature checked out, not on the payload's
   * first read: their start-up (some 50-80 ms: a worker thread's boot, a process) then overlaps
   * what the caller does between the two, and the first verified chunk waits in the stream. The
   * payload must still be consumed or destroyed; a failure before it is read waits in it for the
   * reader (a pipeline from it fails with that error).
   */
  startNow?: boolean;
}

export interface OpenedBundle {
  manifest: BundleManifest;
  /** Id of the trusted key whose signature matched. */
  keyId: string;
  /**
   * The uncompressed image. It yields only verified bytes, fails with a KubeosError
   * (E_HASH_MISMATCH, E_BUNDLE_TRUNCATED, E_BUNDLE_INVALID, E_FETCH) on any problem and ends only
   * after every check (compressed sha256, chunk hashes, sizes, end of archive) passed. Consume or
   * destroy it: destroying stops zstd and the source.
   */
  payload: Readable;
}

export interface UnverifiedHeader {
  manifest: BundleManifest;
  manifestBytes: Buffer;
  signature: Signature;
}

type Entry = tar.Extract extends AsyncIterable<infer E> ? E : never;

/** Generous: a slow download of a big image must not be cut off; the caller's signal stops it. */
const zstdTimeoutMs = 24 * 60 * 60 * 1000;

/** What a file starts with, in words, for an error about something that is not a bundle. */
function describeStart(head: Buffer): string {
  if (head.length >= 2 && head[0] === 0x1f && head[1] === 0x8b) return 'gzip data';
  if (head.length >= 4 && head.readUInt32LE(0) === 0xfd2fb528) return 'zstd data';
  if (head.length >= 3 && head.toString('latin1', 0, 3) === 'PK\x03') return 'a zip archive';
  const text = head.subarray(0, 64);
  if (text.length > 0 && text.every((b) => b === 0x09 || b === 0x0a || b === 0x0d || (b >= 0x20 && b < 0x7f))) return `text (${JSON.stringify(text.toString('latin1').slice(0, 24))}...)`;
  return 'other data';
}

/** A bundle's first 100 bytes: the name field of its first tar header, "manifest.json" padded with NULs. */
const firstNameField = Buffer.concat([Buffer.from(manifestMember), Buffer.alloc(100 - manifestMember.length)]);

class BundleEntries {
  private sourceEnded = false;
  /** The first bytes read (up to one tar header), to tell "not a bundle" from "a bundle cut short". */
  private head = Buffer.alloc(0);
  /** The last member whose header was read. */
  lastMember: string | undefined;
  private sourceError: unknown;
  private tarFailed = false;
  private readonly iterator: AsyncIterator<Entry>;
  readonly done: Promise<unknown>;

  constructor(readonly source: Readable) {
    const extract = tar.extract();
    source.once('error', (error) => {
      this.sourceError ??= error;
    });
    extract.on('error', () => {
      this.tarFailed = true;
    });
    const watchEnd = new Transform({
      transform: (chunk: Buffer, _encoding, callback) => {
        if (this.head.length < 512) this.head = Buffer.concat([this.head, chunk.subarray(0, 512 - this.head.length)]);
        callback(null, chunk);
      },
      flush: (callback) => {
        this.sourceEnded = true;
        callback();
      },
    });
    // Settled here so a failure surfaces through the entry iterator, never as an unhandled rejection.
    this.done = pipeline(source, watchEnd, extract).catch((error: unknown) => error);
    this.iterator = extract[Symbol.asyncIterator]();
  }

  /** True when the stream ended cleanly but the archive (or an entry) did not. */
  get truncated(): boolean {
    return this.sourceEnded && this.tarFailed;
  }

  classify(error: unknown): KubeosError {
    if (isKubeosError(error)) return error;
    if (this.sourceError !== undefined) {
      const cause = this.sourceError;
      if (isKubeosError(cause)) return cause;
      return new KubeosError('E_FETCH', `reading the bundle failed: ${(cause as Error).message ?? String(cause)}`, { cause });
    }
    // a file that does not even start like one is not a bundle, however short it is
    const seen = this.head.subarray(0, Math.min(this.head.length, firstNameField.length));
    if (!seen.equals(firstNameField.subarray(0, seen.length)) || (this.sourceEnded && this.head.length === 0)) {
      return new KubeosError('E_BUNDLE_INVALID', `not a kubeos bundle: it starts with ${this.head.length === 0 ? 'nothing (the file is empty)' : describeStart(this.head)}, not the tar header of ${manifestMember}`, {
        cause: error,
        hint: 'a bundle is the uncompressed tar kubeos bundle create writes (manifest.json, manifest.sig, payload.img.zst)',
      });
    }
    if (this.sourceEnded) return new KubeosError('E_BUNDLE_TRUNCATED', 'bundle is truncated: the data ends inside the archive', { cause: error });
    const where = this.lastMember === undefined ? 'its first tar header' : `the tar header after the ${this.lastMember} member`;
    return new KubeosError('E_BUNDLE_INVALID', `damaged bundle: ${where} is not a valid tar header`, { cause: error });
  }

  async next(expected: string): Promise<Entry> {
    let result: IteratorResult<Entry>;
    try {
      result = await this.iterator.next();
    } catch (error) {
      throw this.classify(error);
    }
    if (result.done && this.lastMember === undefined && this.head.length === 0) {
      throw new KubeosError('E_BUNDLE_INVALID', 'not a kubeos bundle: the file is empty', { hint: 'a bundle is the tar kubeos bundle create writes' });
    }
    if (result.done) {
      throw new KubeosError('E_BUNDLE_TRUNCATED', `bundle is truncated: it ends before the ${expected} member`, { details: { expected } });
    }
    const name = result.value.header.name;
    this.lastMember = name;
    if (name !== expected || (result.value.header.type ?? 'file') !== 'file') {
      result.value.resume();
      throw new KubeosError('E_BUNDLE_INVALID', `bundle member is "${name}", expected "${expected}"`, { details: { expected, actual: name } });
    }
    return result.value;
  }

  async readSmall(entry: Entry, limit: number): Promise<Buffer> {
    const size = entry.header.size ?? 0;
    if (size > limit) {
      entry.resume();
      throw new KubeosError('E_BUNDLE_INVALID', `bundle member ${entry.header.name} is ${size} bytes, at most ${limit} allowed`);
    }
    const parts: Buffer[] = [];
    try {
      for await (const part of entry) parts.push(part as Buffer);
    } catch (error) {
      throw this.classify(error);
    }
    return Buffer.concat(parts);
  }

  /** After the payload: the archive must end here. */
  async expectEnd(): Promise<void> {
    let result: IteratorResult<Entry>;
    try {
      result = await this.iterator.next();
    } catch (error) {
      const classified = this.classify(error);
      // every member arrived whole: what follows is not a cut-off archive but bytes appended to one
      if (classified.code === 'E_BUNDLE_TRUNCATED' || classified.code === 'E_BUNDLE_INVALID') {
        throw new KubeosError('E_BUNDLE_INVALID', 'the bundle has data after its payload that is not a tar end-of-archive (bytes appended to the file?)', {
          cause: error,
          hint: 'a bundle ends with its payload.img.zst member; download or copy it again',
        });
      }
      throw classified;
    }
    if (!result.done) {
      result.value.resume();
      throw new KubeosError('E_BUNDLE_INVALID', `unexpected bundle member "${result.value.header.name}" after the payload`);
    }
  }

  close(): void {
    this.source.destroy();
    void this.iterator.return?.();
  }
}

async function readHeader(entries: BundleEntries): Promise<UnverifiedHeader & { parsed: unknown }> {
  const manifestBytes = await entries.readSmall(await entries.next(manifestMember), maxManifestBytes);
  const signatureBytes = await entries.readSmall(await entries.next(signatureMember), maxSignatureBytes);
  let signatureJson: unknown;
  try {
    signatureJson = JSON.parse(signatureBytes.toString('utf8'));
  } catch (cause) {
    throw new KubeosError('E_SIGNATURE', `${signatureMember} is not JSON`, { cause });
  }
  const signature = parseSignature(signatureJson, signatureMember, 'E_SIGNATURE');
  let parsed: unknown;
  try {
    parsed = JSON.parse(manifestBytes.toString('utf8'));
  } catch {
    parsed = undefined;
  }
  return { manifestBytes, signature, parsed, manifest: undefined as unknown as BundleManifest };
}

function parseManifest(parsed: unknown): BundleManifest {
  if (parsed === undefined) throw new KubeosError('E_BUNDLE_INVALID', `${manifestMember} is not JSON`);
  return validateManifest(parsed);
}

/** The manifest and signature, NOT verified: for `bundle info` and diagnostics only. */
export async function readBundleHeader(source: Readable): Promise<UnverifiedHeader> {
  const entries = new BundleEntries(source);
  try {
    const header = await readHeader(entries);
    return { manifestBytes: header.manifestBytes, signature: header.signature, manifest: parseManifest(header.parsed) };
  } finally {
    entries.close();
  }
}

/** The payload member's header, refused when its size is not the manifest's. */
async function nextPayload(entries: BundleEntries, manifest: BundleManifest): Promise<Entry> {
  const entry = await entries.next(payloadMember);
  if (entry.header.size !== manifest.payload.size) {
    entry.resume();
    throw new KubeosError('E_BUNDLE_INVALID', `payload member is ${entry.header.size} bytes, the manifest says ${manifest.payload.size}`, {
      details: { check: 'size', expected: manifest.payload.size, actual: entry.header.size },
    });
  }
  return entry;
}

/**
 * Verifies the manifest signature (E_UNKNOWN_KEY, E_SIGNATURE) before trusting one byte of it, then
 * hands back the manifest and the verifying payload stream.
 */
export async function readBundle(source: Readable, options: ReadBundleOptions): Promise<OpenedBundle> {
  const entries = new BundleEntries(source);
  let manifest: BundleManifest;
  let keyId: string;
  let payloadEntry: Entry;
  try {
    const header = await readHeader(entries);
    keyId = verifySignature(header.manifestBytes, header.signature, options.trustedKeys, 'bundle manifest');
    manifest = parseManifest(header.parsed);
    if (manifest.keyId !== keyId) {
      throw new KubeosError('E_BUNDLE_INVALID', `manifest names key ${manifest.keyId} but is signed by ${keyId}`);
    }
    if (options.compatible !== undefined) checkCompatible(manifest, options.compatible);
    payloadEntry = await nextPayload(entries, manifest);
  } catch (error) {
    entries.close();
    throw error;
  }
  const payload = new VerifiedPayload(entries, payloadEntry, manifest, options);
  if (options.startNow === true) {
    // nobody listens yet: the error stays on the stream (`errored`) for the pipeline that reads it
    payload.on('error', () => {});
    payload.read(0);
  }
  return { manifest, keyId, payload };
}

/**
 * The payload checked against the manifest's own hashes, NOT against a signature: for diagnostics
 * (`kubeos bundle diff` without --pubkey) that want a bundle's image and trust nothing it says.
 * A host never installs from this.
 */
export async function readUnsignedBundle(source: Readable, options: { signal?: AbortSignal } = {}): Promise<{ manifest: BundleManifest; payload: Readable }> {
  const entries = new BundleEntries(source);
  let manifest: BundleManifest;
  let payloadEntry: Entry;
  try {
    manifest = parseManifest((await readHeader(entries)).parsed);
    payloadEntry = await nextPayload(entries, manifest);
  } catch (error) {
    entries.close();
    throw error;
  }
  return { manifest, payload: new VerifiedPayload(entries, payloadEntry, manifest, { trustedKeys: new Map(), signal: options.signal }) };
}

/**
 * The payload member through `zstd -d` and the chunk verifier. Event-driven on purpose (no async
 * iteration, no generator): a gigabyte arrives from zstd in some 16,000 pieces, and a promise per
 * piece cost the agent more CPU than the hashing.
 */
class VerifiedPayload extends Readable {
  private child: ZstdChild | undefined;
  private started = false;
  private finished = false;
  /** The reader's buffer is full: zstd's output waits until _read. */
  private full = false;
  private canFlow: () => boolean = () => true;

  constructor(
    private readonly entries: BundleEntries,
    private readonly entry: Entry,
    private readonly manifest: BundleManifest,
    private readonly options: ReadBundleOptions,
  ) {
    super({ highWaterMark: 4 << 20 });
  }

  override _read(): void {
    this.full = false;
    if (this.started) {
      if (this.canFlow()) this.child?.stdout.resume();
      return;
    }
    this.started = true;
    this.run().then(
      () => {
        this.finished = true;
        this.push(null);
      },
      (error: unknown) => this.destroy((this.options.signal?.aborted ? this.options.signal.reason : this.entries.classify(error)) as Error),
    );
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (!this.finished) {
      this.child?.kill();
      this.entries.close();
    }
    callback(error);
  }

  private deliver(chunk: Buffer): void {
    if (!this.push(chunk)) {
      this.full = true;
      this.child?.stdout.pause();
    }
  }

  private async run(): Promise<void> {
    const { entries, manifest, options } = this;
    const { signal, chunkPool } = options;
    const chunksOnly = options.chunksOnly ?? chunkPool !== undefined;
    const compressed = chunksOnly ? new HashTap(undefined, false) : chunkPool === undefined ? new HashTap() : new OffThreadHashTap();
    const hasher = chunkPool === undefined ? undefined : new ChunkHasher();
    const whole = chunkPool === undefined || chunksOnly ? undefined : new StreamHasher();
    let stop: (error: unknown) => void = () => {};
    // With a pool, zstd's output is read straight into the chunk buffers and hashed off-thread.
    const pooled = chunkPool === undefined || hasher === undefined ? undefined : new PooledChunkVerifier(manifest.payload, chunkPool, hasher, {
      release: (chunk) => this.deliver(chunk),
      ready: () => {
        if (!this.full) this.child?.stdout.resume();
      },
      failed: (error) => stop(error),
    }, whole);
    try {
      // zstd checks its frame's xxhash64 too (cheap, in its own process): with chunksOnly (the agent)
      // nothing else reads those bytes, and a bundle whose checksum was flipped must be refused
      // there as it is by bundle verify, which also hashes the whole compressed payload
      const child = await startZstd(['-d', '-c', '-q', '--no-progress'], {
        signal,
        timeoutMs: zstdTimeoutMs,
        onread: pooled && { buffer: () => pooled.readTarget(), callback: (nread, buffer) => pooled.received(nread, buffer as Buffer) },
      });
      this.child = child;
      if (this.destroyed) child.kill();
      // tar-stream may have destroyed the member already (the archive ended inside it) while zstd
      // started: a pipeline from a destroyed streamx stream never settles, so that hung for ever
      if ((this.entry as { destroyed?: boolean }).destroyed) {
        child.kill();
        child.stdin.destroy();
        child.stdout.destroy();
        await child.exited;
        throw entries.classify(new Error('the payload member ended before its data did'));
      }
      // Settled values, so an early exit (EPIPE, a kill) is judged below instead of escaping.
      const fed = pipeline(this.entry, compressed, child.stdin).then(() => undefined, (error: unknown) => error ?? new Error('feed failed'));
      let finish: () => Promise<void>;
      await new Promise<void>((resolve, reject) => {
        stop = (error: unknown) => {
          child.stdout.destroy();
          reject(error);
        };
        if (pooled !== undefined) {
          this.canFlow = () => pooled.ready;
          finish = () => pooled.finish();
        } else {
          const verifier = new ChunkVerifier(manifest.payload, !chunksOnly);
          finish = async () => {
            for (const chunk of verifier.finish()) this.push(chunk);
          };
          child.stdout.on('data', (data: Buffer) => {
            try {
              for (const chunk of verifier.update(data)) this.deliver(chunk);
            } catch (error) {
              stop(error);
            }
          });
        }
        child.stdout.once('end', resolve);
        child.stdout.once('error', reject);
        child.stdout.once('close', () => resolve());
      });
      const feedError = await fed;
      const result = await child.exited;
      signal?.throwIfAborted();
      if (entries.truncated) throw new KubeosError('E_BUNDLE_TRUNCATED', `bundle is truncated: the payload ends after ${compressed.bytes} of ${manifest.payload.size} bytes`);
      if (result.exitCode !== 0) {
        const why = result.stderr.split('\n').slice(-2).join(' ') || `exit ${result.exitCode ?? 'by signal'}`;
        throw new KubeosError('E_HASH_MISMATCH', `compressed payload is corrupt: zstd: ${why}`, {
          details: { check: 'decompress', stderr: result.stderr },
        });
      }
      if (feedError !== undefined) throw entries.classify(feedError);
      const actual = chunksOnly ? manifest.payload.sha256 : await compressed.digest();
      if (compressed.bytes !== manifest.payload.size || actual !== manifest.payload.sha256) {
        throw new KubeosError('E_HASH_MISMATCH', 'sha256 of the compressed payload does not match the manifest', {
          details: { check: 'sha256', expected: manifest.payload.sha256, actual, size: compressed.bytes },
        });
      }
      await entries.expectEnd();
      await finish!();
    } finally {
      await hasher?.close();
      await whole?.close();
    }
  }
}
