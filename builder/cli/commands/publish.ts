/** `kubeos publish FILE`: upload a bundle to S3 and point a signed channel index at it. */
import type { Argv, CommandModule } from 'yargs';
import { loadPrivateKey, loadTrustedKeys } from '../../../runtime/core/crypto/keys.js';
import { KubeosError } from '../../../runtime/core/errors.js';
import { defaultExpiresDays } from '../../bundle/publish-defaults.js';
import { makeProgress, printResult, type GlobalArgs } from '../output.js';

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
      .option('part-size-mib', { type: 'number', describe: 'Multipart part size in MiB (min 5)' }) as Argv<PublishArgs>,
  handler: async (args) => {
    if (!(args['expires-days'] > 0)) throw new KubeosError('E_USAGE', `--expires-days must be > 0, got ${args['expires-days']}`);
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
        `  channel  s3://${args.bucket}/${result.channelKey} (expires ${result.expires})`,
      ].join('\n'),
    );
  },
};
