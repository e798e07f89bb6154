/**
 * Publishes a bundle to a channel. Order is the whole point: verify the bundle locally, upload it
 * under its content address (skipped when already there: a retry is idempotent), confirm it is
 * complete, and only then overwrite the channel index. A reader therefore never sees an index
 * naming a missing or partial bundle, and any failure before the last step changes no channel.
 */
import type { KeyObject } from 'node:crypto';
import { GetObjectCommand, HeadObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import { releaseHistoryLimit, releasesOf, signChannel, verifyChannel, type ChannelSigned } from '../../runtime/core/channel/channel-index.js';
import { bundlePath, channelPath, checkChannelName, objectKey } from '../../runtime/core/channel/layout.js';
import { keyIdOf, makeTrustedKeys, type TrustedKeys } from '../../runtime/core/crypto/keys.js';
import { verifyBundleFile } from '../../runtime/core/bundle/verify-bundle-file.js';
import { isKubeosError, KubeosError } from '../../runtime/core/errors.js';
import { compareVersions } from '../../runtime/core/compare-versions.js';
import { defaultExpiresDays } from './publish-defaults.js';
import { resolveRegion } from './s3-client.js';
import { uploadFile } from './upload-file.js';
import { uploadChunks, type ChunkUpload } from './upload-chunks.js';

export const defaultExpiresInSeconds = defaultExpiresDays * 24 * 60 * 60;

export interface PublishOptions {
  bundle: string;
  client: S3Client;
  bucket: string;
  prefix?: string | undefined;
  /** The client's endpoint (undefined: AWS S3), for messages and the hosts' URL. */
  endpoint?: string | undefined;
  /** The client's region (resolved: see resolveRegion), for the hosts' URL on AWS S3. */
  region?: string | undefined;
  channel: string;
  /** Signs the channel index; its public half is trusted for the bundle and the old index. */
  privateKey: KeyObject;
  /** More keys to trust for the bundle and the current index (e.g. during a key rotation). */
  extraTrustedKeys?: TrustedKeys;
  expiresInSeconds?: number;
  allowDowngrade?: boolean;
  now?: () => Date;
  partSize?: number;
  multipartThreshold?: number;
  signal?: AbortSignal | undefined;
  onProgress?: (step: 'verify' | 'upload' | 'chunks' | 'channel' | 'done', fraction?: number, bytes?: { done: number; total: number }) => void;
}

export interface PublishResult {
  channel: string;
  serial: number;
  version: string;
  expires: string;
  bundleKey: string;
  channelKey: string;
  size: number;
  sha256: string;
  /** False when the bundle was already stored (a retry or a re-publish). */
  uploaded: boolean;
  /** A format 2 bundle's chunk store (`chunks/`): what was uploaded, what was there already. */
  chunks?: ChunkUpload | undefined;
  /** What hosts that reach the endpoint as written use for --update-server (the base of channels/ and bundles/). */
  updateServer: string;
  previous?: { serial: number; version: string } | undefined;
}

function isNotFound(error: unknown): boolean {
  const e = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  // a missing bucket is a 404 too, but no object of this publish can be "not there yet" in it
  if (e?.name === 'NoSuchBucket') return false;
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}

const credentialsHint = 'set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (a local s3rver takes S3RVER and S3RVER), or AWS_PROFILE, or pass --access-key-id with AWS_SECRET_ACCESS_KEY set';

/** An S3 failure as an error that says which of endpoint, bucket or credentials is wrong, and how to fix it. */
function publishError(what: string, error: unknown, options: Pick<PublishOptions, 'bucket' | 'endpoint'>): KubeosError {
  if (isKubeosError(error)) return error;
  const e = error as { name?: string; message?: string; code?: string; cause?: { code?: string }; $metadata?: { httpStatusCode?: number } };
  const where = options.endpoint ?? 'AWS S3';
  const failed = `${what} failed: ${e?.name ?? 'Error'}: ${e?.message ?? String(error)}`;
  const status = e?.$metadata?.httpStatusCode;
  const network = [e?.code, e?.cause?.code].find((c) => c !== undefined && /^(ECONNREFUSED|ENOTFOUND|EAI_AGAIN|ETIMEDOUT|ECONNRESET|EHOSTUNREACH)$/.test(c));
  const [message, hint] =
    e?.name === 'CredentialsProviderError' ? [`no S3 credentials found for ${where}`, credentialsHint]
    : e?.name === 'NoSuchBucket' ? [`bucket ${options.bucket} does not exist at ${where}`, `publish does not create buckets: create it first (e.g. aws s3 mb s3://${options.bucket}${options.endpoint === undefined ? '' : ` --endpoint-url ${options.endpoint}`}, or s3rver --configure-bucket ${options.bucket}), or name an existing one with --bucket`]
    : e?.name === 'InvalidAccessKeyId' || e?.name === 'SignatureDoesNotMatch' ? [`${where} refused the credentials (${e.name})`, credentialsHint]
    : e?.name === 'AccessDenied' || status === 403 ? [`${where} denied access to bucket ${options.bucket}`, `the credentials need s3:GetObject, s3:PutObject and s3:ListBucket on ${options.bucket}`]
    : network !== undefined ? [`cannot reach the S3 endpoint ${where} (${network})`, 'check --endpoint (scheme, host and port) and that the server is running']
    : [failed, 'check --endpoint, --bucket and credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or --access-key-id)'];
  return new KubeosError('E_PUBLISH', message === failed ? failed : `${message}: ${what} failed`, { cause: error, hint, details: { bucket: options.bucket, endpoint: options.endpoint } });
}

/**
 * The URL hosts fetch the channel from, for --update-server: the endpoint's path-style URL of the
 * bucket and prefix, or AWS S3's virtual-hosted URL when there is no endpoint.
 */
export function updateServerOf(options: { endpoint?: string | undefined; bucket: string; prefix?: string | undefined; region?: string | undefined }): string {
  const base = options.endpoint === undefined ? `https://${options.bucket}.s3.${resolveRegion(options.region)}.amazonaws.com` : `${options.endpoint.replace(/\/+$/, '')}/${options.bucket}`;
  return `${base}/${objectKey(options.prefix, '')}`.replace(/\/+$/, '/');
}

interface CurrentChannel {
  signed: ChannelSigned | undefined;
  /** The index object's ETag, for the conditional write that replaces it (undefined: there is none). */
  etag: string | undefined;
}

async function readCurrentChannel(options: PublishOptions, key: string, trustedKeys: TrustedKeys): Promise<CurrentChannel> {
  let text: string;
  let etag: string | undefined;
  try {
    const object = await options.client.send(new GetObjectCommand({ Bucket: options.bucket, Key: key }), { abortSignal: options.signal });
    text = (await object.Body?.transformToString('utf8')) ?? '';
    etag = object.ETag;
  } catch (error) {
    if (isNotFound(error)) return { signed: undefined, etag: undefined };
    throw publishError(`reading s3://${options.bucket}/${key}`, error, options);
  }
  // Only the serial matters here; an expired index must not stop the publish that replaces it.
  return { signed: verifyChannel(text, { trustedKeys, channel: options.channel, ignoreExpiry: true }), etag };
}

/** 412 (If-Match / If-None-Match failed) or 409 (a conditional write racing another): someone else wrote the index first. */
function lostRace(error: unknown): boolean {
  const status = (error as { $metadata?: { httpStatusCode?: number } })?.$metadata?.httpStatusCode;
  return status === 412 || status === 409;
}

/** Attempts at the index write when other publishers keep winning the conditional write. */
const channelWriteAttempts = 5;

async function headSize(options: PublishOptions, key: string): Promise<{ size: number; sha256: string | undefined } | undefined> {
  try {
    const head = await options.client.send(new HeadObjectCommand({ Bucket: options.bucket, Key: key }), { abortSignal: options.signal });
    return { size: head.ContentLength ?? -1, sha256: head.Metadata?.['sha256'] };
  } catch (error) {
    if (isNotFound(error)) return undefined;
    throw publishError(`HEAD s3://${options.bucket}/${key}`, error, options);
  }
}

export async function publishBundle(options: PublishOptions): Promise<PublishResult> {
  const progress = options.onProgress ?? (() => {});
  const channel = checkChannelName(options.channel);
  const trustedKeys = makeTrustedKeys([options.privateKey, ...(options.extraTrustedKeys?.values() ?? [])]);
  const now = (options.now ?? (() => new Date()))();
  const expiresIn = options.expiresInSeconds ?? defaultExpiresInSeconds;
  if (!Number.isSafeInteger(expiresIn) || expiresIn <= 0) throw new KubeosError('E_USAGE', `expiry must be a positive number of seconds, got ${expiresIn}`);

  // A bundle that does not verify is never uploaded.
  progress('verify', 0);
  const verified = await verifyBundleFile(options.bundle, { trustedKeys, signal: options.signal, onBytes: () => {} });
  const manifest = verified.manifest;
  const bundleKey = objectKey(options.prefix, bundlePath(verified.sha256));
  const channelKey = objectKey(options.prefix, channelPath(channel));

  const checkDowngrade = (previous: ChannelSigned | undefined) => {
    if (previous !== undefined && !options.allowDowngrade && compareVersions(manifest.version, previous.version) < 0) {
      throw new KubeosError('E_DOWNGRADE', `channel ${channel} is at ${previous.version}; publishing ${manifest.version} would downgrade it`, {
        hint: 'pass --allow-downgrade to roll a channel back on purpose',
        details: { current: previous.version, publishing: manifest.version },
      });
    }
  };
  checkDowngrade((await readCurrentChannel(options, channelKey, trustedKeys)).signed);

  progress('upload', 0);
  const existing = await headSize(options, bundleKey);
  const alreadyStored = existing !== undefined && existing.size === verified.size && existing.sha256 === verified.sha256;
  if (!alreadyStored) {
    try {
      await uploadFile({
        client: options.client,
        bucket: options.bucket,
        key: bundleKey,
        path: options.bundle,
        size: verified.size,
        contentType: 'application/x-tar',
        metadata: { sha256: verified.sha256, version: manifest.version },
        partSize: options.partSize,
        multipartThreshold: options.multipartThreshold,
        signal: options.signal,
        onBytes: (sent) => progress('upload', verified.size === 0 ? 1 : sent / verified.size, { done: sent, total: verified.size }),
      });
    } catch (error) {
      if (options.signal?.aborted) {
        throw new KubeosError('E_PUBLISH', `upload of ${bundleKey} was interrupted; channel ${channel} is unchanged`, { cause: options.signal.reason });
      }
      throw publishError(`uploading s3://${options.bucket}/${bundleKey}`, error, options);
    }
    const stored = await headSize(options, bundleKey);
    if (stored?.size !== verified.size) {
      throw new KubeosError('E_PUBLISH', `s3://${options.bucket}/${bundleKey} holds ${stored?.size ?? 'nothing'} bytes after upload, expected ${verified.size}; channel ${channel} is unchanged`);
    }
  }
  progress('upload', 1);

  // the chunks hosts will ask for go up before the index names the release, like the bundle
  let chunks: ChunkUpload | undefined;
  if (manifest.payload.index !== undefined || manifest.payload.indexObject !== undefined) {
    progress('chunks', 0);
    chunks = await uploadChunks({
      client: options.client,
      bucket: options.bucket,
      prefix: options.prefix,
      bundle: options.bundle,
      manifest,
      trustedKeys,
      signal: options.signal,
      fail: (what, error) => options.signal?.aborted ? new KubeosError('E_PUBLISH', `${what} was interrupted; channel ${channel} is unchanged`, { cause: options.signal.reason }) : publishError(what, error, options),
      // counts of chunks, not bytes: the fraction alone
      onBytes: (done, total) => progress('chunks', done / total),
    });
    progress('chunks', 1);
  }

  // The index is replaced only if nobody replaced it since it was read (If-Match on its ETag, or
  // If-None-Match: * for the first): two publishers at once never both write the same serial.
  // The loser reads the new index and signs the next serial on top of it.
  progress('channel');
  let signed: ChannelSigned | undefined;
  let previous: ChannelSigned | undefined;
  for (let attempt = 1; signed === undefined; attempt++) {
    options.signal?.throwIfAborted();
    const current = await readCurrentChannel(options, channelKey, trustedKeys);
    previous = current.signed;
    checkDowngrade(previous);
    const next = signIndex(previous, manifest, verified, channel, now, expiresIn);
    const body = Buffer.from(signChannel(next, options.privateKey));
    try {
      await options.client.send(
        new PutObjectCommand({
          Bucket: options.bucket,
          Key: channelKey,
          Body: body,
          ContentLength: body.length,
          ContentType: 'application/json',
          // Hosts poll this object; caches must revalidate so a new serial is seen promptly.
          CacheControl: 'no-cache',
          Metadata: { serial: String(next.serial), keyid: keyIdOf(options.privateKey) },
          ...(current.etag === undefined ? { IfNoneMatch: '*' } : { IfMatch: current.etag }),
        }),
        { abortSignal: options.signal },
      );
      signed = next;
    } catch (error) {
      if (!lostRace(error)) throw publishError(`writing s3://${options.bucket}/${channelKey}`, error, options);
      if (attempt === channelWriteAttempts) {
        throw new KubeosError('E_PUBLISH', `channel ${channel} was replaced by another publisher ${attempt} times while this one wrote it; the bundle is stored, the channel holds the other publisher's index`, {
          hint: 'publish again once the other publishers are done (one publisher per channel at a time, e.g. a CI concurrency group)',
          details: { attempts: attempt },
        });
      }
    }
  }
  progress('done');
  return {
    channel,
    serial: signed.serial,
    version: manifest.version,
    expires: signed.expires,
    bundleKey,
    channelKey,
    size: verified.size,
    sha256: verified.sha256,
    uploaded: !alreadyStored,
    chunks,
    updateServer: updateServerOf(options),
    previous: previous === undefined ? undefined : { serial: previous.serial, version: previous.version },
  };
}

/** The next index of the channel: the bundle as its newest release, one serial above `previous`. */
function signIndex(previous: ChannelSigned | undefined, manifest: Awaited<ReturnType<typeof verifyBundleFile>>['manifest'], verified: { sha256: string; size: number }, channel: string, now: Date, expiresIn: number): ChannelSigned {
  const signed: ChannelSigned = {
    type: 'kubeos-channel',
    format: 1,
    channel,
    serial: (previous?.serial ?? 0) + 1,
    published: isoSeconds(now),
    expires: isoSeconds(new Date(now.getTime() + expiresIn * 1000)),
    os: manifest.os,
    version: manifest.version,
    arch: manifest.arch,
    compatible: manifest.compatible,
    bundle: { path: bundlePath(verified.sha256), size: verified.size, sha256: verified.sha256 },
  };
  // the history hosts may be pinned to: this release first, then the ones the channel offered before
  const current = { version: signed.version, published: signed.published, bundle: signed.bundle };
  const earlier = previous === undefined ? [] : releasesOf(previous).filter((r) => r.version !== signed.version);
  signed.releases = [current, ...earlier].slice(0, releaseHistoryLimit);
  return signed;
}

function isoSeconds(date: Date): string {
  return `${date.toISOString().slice(0, 19)}Z`;
}
