/** `kubeos channel show URL`: fetch and verify a channel index the way a host does. */
import type { Argv, CommandModule } from 'yargs';
import { fetchChannel } from '../../../runtime/core/channel/fetch-channel.js';
import { loadTrustedKeys } from '../../../runtime/core/crypto/keys.js';
import { printResult, type GlobalArgs } from '../output.js';

interface ShowArgs extends GlobalArgs {
  url: string;
  pubkey: string[];
  'last-serial'?: number;
  channel?: string;
}

/** .../channels/<name>.json names its channel; the index must agree. */
function channelFromUrl(url: string): string | undefined {
  return /\/channels\/([^/]+)\.json$/.exec(new URL(url).pathname)?.[1];
}

const show: CommandModule<GlobalArgs, ShowArgs> = {
  command: 'show <url>',
  describe: 'GET a channel index (…/channels/NAME.json), verify signature, expiry and serial, print it',
  builder: (y) =>
    y
      .positional('url', { type: 'string', demandOption: true, describe: 'http(s) URL of the channel index' })
      .option('pubkey', { type: 'string', array: true, demandOption: true, describe: 'Trusted public key (repeatable)' })
      .option('last-serial', { type: 'number', describe: 'Refuse a serial lower than this (rollback check)' })
      .option('channel', { type: 'string', describe: 'Expected channel name (default: from the URL)' }) as Argv<ShowArgs>,
  handler: async (args) => {
    const fetched = await fetchChannel(args.url, {
      trustedKeys: await loadTrustedKeys(args.pubkey),
      lastSerial: args['last-serial'],
      channel: args.channel ?? channelFromUrl(args.url),
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
