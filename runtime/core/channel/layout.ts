/**
 * The object layout IS the protocol between publisher and hosts (docs/bundles.md): everything sits
 * under one base URL (bucket + prefix) and is read with plain GETs.
 *   channels/<channel>.json     signed channel index, overwritten in place (serial grows)
 *   bundles/<sha256>.kubeos     immutable bundle, named by the sha256 of its bytes
 */
import { KubeosError } from '../errors.js';

export const channelNamePattern = /^[a-z0-9][a-z0-9._-]{0,62}$/;
export const bundlePathPattern = /^bundles\/([0-9a-f]{64})\.kubeos$/;

export function checkChannelName(name: string): string {
  if (!channelNamePattern.test(name)) {
    throw new KubeosError('E_USAGE', `channel name "${name}" must match ${channelNamePattern}`, { details: { channel: name } });
  }
  return name;
}

/** Path of a channel index relative to the base. */
export function channelPath(channel: string): string {
  return `channels/${checkChannelName(channel)}.json`;
}

/** Path of a bundle relative to the base: content-addressed, so re-uploading is idempotent. */
export function bundlePath(sha256: string): string {
  return `bundles/${sha256}.kubeos`;
}

/** An S3 key under an optional prefix ("a/b", "a/b/" and "" all work). */
export function objectKey(prefix: string | undefined, path: string): string {
  const clean = (prefix ?? '').replace(/^\/+|\/+$/g, '');
  return clean === '' ? path : `${clean}/${path}`;
}

/** The bundle's URL given the URL its channel index was read from. */
export function resolveBundleUrl(channelUrl: string, bundleRelativePath: string): string {
  return new URL(`../${bundleRelativePath}`, channelUrl).toString();
}

/** The channel index URL given a base URL (e.g. https://host/bucket/prefix/). */
export function channelUrlOf(baseUrl: string, channel: string): string {
  return new URL(channelPath(channel), baseUrl.endsWith('/') ? baseUrl : `${baseUrl}/`).toString();
}
