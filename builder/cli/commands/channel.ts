/** `kubeos channel show URL`: fetch and verify a channel index the way a host does. */
import type { Argv, CommandModule } from 'yargs';
import { releasesOf } from '../../../runtime/core/channel/channel-index.js';
import { fetchChannel } from '../../../runtime/core/channel/fetch-channel.js';
import { channelUrlOf, parseUpdateSource } from '../../../runtime/core/channel/layout.js';
import { KubeosError } from '../../../runtime/core/errors.js';
import { loadTrustedKeys } from '../../../runtime/core/crypto/keys.js';
import { printResult, type GlobalArgs } from '../../../runtime/cli/output.js';

interface ShowArgs extends GlobalArgs {
  url: string;
  'update-server'?: string;
  pubkey: string[];
  'last-serial'?: number;
  channel?: string;
}

/** The index URL and the channel it must be for: a URL of channels/NAME.json, or a NAME under --update-server. */
function resolveShown(target: string, updateServer: string | undefined): { url: string; channel: string } {
  if (/^https?:\/\//.test(target)) {
    const source = parseUpdateSource('channel show', target, updateServer);
    return { url: target, channel: source.channel! };
  }
  const source = parseUpdateSource('channel show', target, updateServer);
  if (source.updateServer === undefined) {
    throw new KubeosError('E_USAGE', `channel show ${target}: a channel name needs --update-server URL (or give the URL of the index)`, {
      hint: `kubeos channel show ${target} --update-server https://updates.example.com/kubeos/ --pubkey keys/signing.pub.pem`,
    });
  }
  return { url: channelUrlOf(source.updateServer, target), channel: target };
}

const show: CommandModule<GlobalArgs, ShowArgs> = {
  command: 'show <url>',
  describe: 'GET a channel index (…/channels/NAME.json, or NAME with --update-server), verify signature, expiry and serial, print it and the releases it offers',
  builder: (y) =>
    y
      .positional('url', { type: 'string', demandOption: true, describe: 'http(s) URL of the channel index, or a channel name with --update-server' })
      .option('update-server', { type: 'string', describe: 'Base URL of the image server, for a channel given by name' })
      .option('pubkey', { type: 'string', array: true, demandOption: true, describe: 'Trusted public key (repeatable)' })
      .option('last-serial', { type: 'number', describe: 'Refuse a serial lower than this (rollback check)' })
      .option('channel', { type: 'string', describe: 'Expected channel name (default: from the URL)' })
      .example('$0 channel show stable --update-server https://updates.example.com/kubeos/ --pubkey keys/signing.pub.pem', 'what hosts following stable see') as Argv<ShowArgs>,
  handler: async (args) => {
    const last = args['last-serial'];
    if (last !== undefined && (!Number.isSafeInteger(last) || last < 1)) {
      throw new KubeosError('E_USAGE', `--last-serial must be an integer >= 1 (the highest serial seen), got ${String(last)}`, { hint: 'leave it out to skip the rollback check' });
    }
    const shown = resolveShown(args.url, args['update-server']);
    const fetched = await fetchChannel(shown.url, {
      trustedKeys: await loadTrustedKeys(args.pubkey),
      lastSerial: last,
      channel: args.channel ?? shown.channel,
    });
    const s = fetched.signed;
    printResult(args, { ...s, bundleUrl: fetched.bundleUrl }, () =>
      [
        `channel ${s.channel}: ${s.os} ${s.version} (${s.arch}, compatible ${s.compatible})`,
        `  serial     ${s.serial}`,
        `  published  ${s.published}`,
        `  expires    ${s.expires}`,
        `  bundle     ${fetched.bundleUrl}`,
        `  size       ${s.bundle.size}`,
        `  sha256     ${s.bundle.sha256}`,
        `  releases   ${releasesOf(s).map((r) => r.version).join(', ')}`,
      ].join('\n'),
    );
  },
};

export const channelCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'channel <command>',
  describe: 'Inspect published channels',
  builder: (y) => y.command(show).demandCommand(1, 'name a channel command: show'),
  handler: () => {},
};
