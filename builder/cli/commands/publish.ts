/** `kubeos publish FILE`: upload a bundle to S3 and point a signed channel index at it. */
import type { Argv, CommandModule } from 'yargs';
import { loadPrivateKey, loadTrustedKeys } from '../../../runtime/core/crypto/keys.js';
import { KubeosError } from '../../../runtime/core/errors.js';
import { defaultExpiresDays } from '../../bundle/publish-defaults.js';
import { makeProgress, printResult, type GlobalArgs } from '../../../runtime/cli/output.js';

interface PublishArgs extends GlobalArgs {
  file: string;
  endpoint?: string;
  bucket: string;
  prefix?: string;
  channel: string;
  key: string;
  pubkey?: string[];
  region?: string;
  'access-key-id'?: string;
  'secret-access-key'?: string;
  'expires-days': number;
  'allow-downgrade'?: boolean;
  'part-size-mib'?: number;
}

/** For an endpoint on this machine: how a guest of kubeos qemu boot (which reaches only what --forward names) gets there. */
function guestHint(updateServer: string): string {
  const local = /^http:\/\/(?:127\.0\.0\.1|localhost):(\d+)(\/.*)$/.exec(updateServer);
  if (local === null) return '';
  return `\n  QEMU     kubeos qemu boot --forward 10.0.2.100:80=${local[1]} for a guest built with --update-server http://10.0.2.100${local[2]}`;
}

export const publishCommand: CommandModule<GlobalArgs, PublishArgs> = {
  command: 'publish <file>',
  describe: 'Upload a bundle (content-addressed, multipart) and then write the signed channel index',
  builder: (y) =>
    y
      .positional('file', { type: 'string', demandOption: true, describe: 'Bundle file from kubeos bundle create' })
      .option('endpoint', { type: 'string', describe: 'S3 endpoint URL (default: AWS S3)' })
      .option('bucket', { type: 'string', demandOption: true, describe: 'Bucket' })
      .option('prefix', { type: 'string', describe: 'Key prefix inside the bucket, e.g. kubeos/' })
      .option('channel', { type: 'string', demandOption: true, describe: 'Channel to point at the bundle, e.g. stable' })
      .option('key', { type: 'string', demandOption: true, describe: 'Private key that signs the channel index' })
      .option('pubkey', { type: 'string', array: true, describe: 'More trusted public keys (bundle signer, current index signer)' })
      .option('region', { type: 'string', describe: 'Region (default AWS_REGION or us-east-1)' })
      .option('access-key-id', { type: 'string', describe: 'Access key id (default: the AWS credential chain)' })
      .option('secret-access-key', { type: 'string', describe: 'Secret access key (prefer AWS_SECRET_ACCESS_KEY)' })
      .option('expires-days', { type: 'number', default: defaultExpiresDays, describe: 'Days until hosts stop trusting this index' })
      .option('allow-downgrade', { type: 'boolean', describe: 'Allow a lower version than the channel has' })
      .option('part-size-mib', { type: 'number', describe: 'Multipart part size in MiB (min 5)' })
      .example('$0 publish v2.kubeos --endpoint http://127.0.0.1:4568 --bucket images --prefix kubeos --channel stable --key keys/signing.pem', 'hosts built with --update-server http://HOST/images/kubeos and --channel stable then see v2') as Argv<PublishArgs>,
  handler: async (args) => {
    // every option checked before the bundle is read: bad input costs no verify and no upload
    const days = args['expires-days'];
    if (!Number.isFinite(days) || days <= 0 || days > 3650) throw new KubeosError('E_USAGE', `--expires-days must be more than 0 and at most 3650 (ten years), got ${String(days)}`, { details: { expiresDays: days } });
    const part = args['part-size-mib'];
    if (part !== undefined && (!Number.isInteger(part) || part < 5 || part > 5120)) {
      throw new KubeosError('E_USAGE', `--part-size-mib must be a whole number from 5 to 5120 (S3's limits for a multipart part), got ${String(part)}`, { details: { partSizeMib: part } });
    }
    if (args.endpoint !== undefined) {
      let scheme: string | undefined;
      try {
        scheme = new URL(args.endpoint).protocol;
      } catch {
        scheme = undefined;
      }
      if (scheme !== 'http:' && scheme !== 'https:') {
        throw new KubeosError('E_USAGE', `--endpoint ${args.endpoint} is not an http(s) URL`, { hint: `write it with its scheme, e.g. --endpoint http://${args.endpoint.replace(/^[a-z]+:\/\//, '')}`, details: { endpoint: args.endpoint } });
      }
    }
    // The SDK warns about node < 22 for SDK releases after 2027 on every run; not actionable here.
    process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';
    const progress = makeProgress(args);
    // Loaded on use: the AWS SDK costs every other command ~0.3 s of startup.
    const { makeS3Client } = await import('../../bundle/s3-client.js');
    const { publishBundle } = await import('../../bundle/publish-bundle.js');
    const result = await publishBundle({
      bundle: args.file,
      client: makeS3Client({
        endpoint: args.endpoint,
        region: args.region,
        accessKeyId: args['access-key-id'],
        secretAccessKey: args['secret-access-key'] ?? (args['access-key-id'] === undefined ? undefined : process.env['AWS_SECRET_ACCESS_KEY']),
      }),
      bucket: args.bucket,
      prefix: args.prefix,
      endpoint: args.endpoint,
      region: args.region,
      channel: args.channel,
      privateKey: await loadPrivateKey(args.key),
      extraTrustedKeys: args.pubkey === undefined ? undefined : await loadTrustedKeys(args.pubkey),
      expiresInSeconds: Math.round(args['expires-days'] * 86400),
      allowDowngrade: args['allow-downgrade'],
      partSize: args['part-size-mib'] === undefined ? undefined : args['part-size-mib'] * 1024 * 1024,
      onProgress: (step, fraction) => progress(step, fraction),
    });
    printResult(args, result, () =>
      [
        `published ${result.version} to channel ${result.channel} (serial ${result.serial}${result.previous ? `, was ${result.previous.version} serial ${result.previous.serial}` : ''})`,
        `  bundle   s3://${args.bucket}/${result.bundleKey} (${result.uploaded ? 'uploaded' : 'already stored'}, ${result.size} bytes)`,
        ...(result.chunks === undefined ? ['  chunks   none (a format 1 bundle: hosts take the full bundle)'] : [`  chunks   ${result.chunks.uploaded} of ${result.chunks.chunks} uploaded (${result.chunks.uploadedBytes} bytes), ${result.chunks.alreadyStored} already stored`]),
        `  channel  s3://${args.bucket}/${result.channelKey} (expires ${result.expires})`,
        `  hosts    --update-server ${result.updateServer} --channel ${result.channel}${guestHint(result.updateServer)}`,
      ].join('\n'),
    );
  },
};
