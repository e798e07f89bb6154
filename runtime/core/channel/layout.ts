/**
 * The object layout IS the protocol between publisher and hosts (docs/bundles.md): everything sits
 * under one base URL (bucket + prefix) and is read with plain GETs.
 *   channels/<channel>.json     signed channel index, overwritten in place (serial grows)
 *   bundles/<sha256>.kubeos     immutable bundle, named by the sha256 of its bytes
 *   chunks/<sha256>.zst         one chunk of an image (format 2 bundles' index), zstd, named by the
 *                               sha256 of its uncompressed bytes; shared by every release
 *   chunks/packs/<image>.pack   the chunks a release added, concatenated; .map says where each is
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

/** Path of a stored chunk relative to the base: named by the sha256 of its uncompressed bytes. */
export function chunkPath(sha256: string): string {
  return `chunks/${sha256}.zst`;
}

/**
 * The chunk store of a bundle URL laid out as published (`<base>/bundles/<sha256>.kubeos`): the
 * `chunks/` folder beside `bundles/`. Undefined for any other URL or a local file.
 */
export function chunkStoreOf(bundleUrl: string): string | undefined {
  if (!/^https?:\/\//.test(bundleUrl)) return undefined;
  const url = new URL(bundleUrl);
  if (!/\/bundles\/[0-9a-f]{64}\.kubeos$/.test(url.pathname)) return undefined;
  return new URL('../chunks/', url).toString();
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

/** Where a host gets its updates: the image server's base URL and a channel name under it. */
export interface UpdateSource {
  updateServer: string | undefined;
  channel: string | undefined;
}

/**
 * Reads a channel setting as given in agent.json, image.json or a flag. A channel is a NAME
 * (`stable`); the older form, the URL of an index (`https://host/kubeos/channels/stable.json`),
 * still works and is split into its server and name. Anything else is refused, naming `what`.
 */
export function parseUpdateSource(what: string, channel: string | undefined, updateServer: string | undefined): UpdateSource {
  let server = updateServer === undefined || updateServer === '' ? undefined : updateServer;
  if (server !== undefined && !/^https?:\/\/[^/]/.test(server)) {
    throw new KubeosError('E_USAGE', `${what}: updateServer ${JSON.stringify(server)} must be an http(s) URL, the base the channels/ and bundles/ folders sit under`, {
      details: { updateServer: server },
    });
  }
  if (channel === undefined || channel === '') return { updateServer: server === undefined ? undefined : withSlash(server), channel: undefined };
  if (/^https?:\/\//.test(channel)) {
    const legacy = /^(https?:\/\/.+\/)channels\/([a-z0-9][a-z0-9._-]{0,62})\.json$/.exec(channel);
    if (legacy === null) {
      throw new KubeosError('E_USAGE', `${what}: channel ${JSON.stringify(channel)} is a URL that does not end in channels/NAME.json`, {
        hint: 'give the channel as a name (stable) and the image server as updateServer (kubeos build --update-server URL)',
        details: { channel },
      });
    }
    if (server !== undefined && withSlash(server) !== legacy[1]) {
      throw new KubeosError('E_USAGE', `${what}: channel ${channel} is on another server than updateServer ${server}`, {
        hint: 'give the channel as a name; the server comes from updateServer alone',
        details: { channel, updateServer: server },
      });
    }
    server = legacy[1];
    return { updateServer: server, channel: legacy[2] };
  }
  if (!channelNamePattern.test(channel)) {
    throw new KubeosError('E_USAGE', `${what}: channel ${JSON.stringify(channel)} is not a channel name (${channelNamePattern})`, {
      hint: 'a channel is a name such as stable or beta', details: { channel },
    });
  }
  return { updateServer: server === undefined ? undefined : withSlash(server), channel };
}

function withSlash(url: string): string {
  return url.endsWith('/') ? url : `${url}/`;
}
