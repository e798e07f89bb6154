/** A real S3 server (s3rver) on 127.0.0.1, a random port and a temp directory, for one test. */
import type { ExecutionContext } from 'ava';
import { ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';
// @ts-expect-error s3rver ships no types
import S3rver from 's3rver';
import { makeS3Client } from '../../builder/bundle/s3-client.js';
import { makeTempDir } from './temp-dir.js';

// The SDK's node<22 notice for its 2027 releases is noise in test output.
process.env['AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED'] ??= 'true';

export const s3Credentials = { accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' };

export interface TestS3 {
  endpoint: string;
  bucket: string;
  client: S3Client;
  /** Public (anonymous GET) base URL of the bucket, as hosts see it. */
  baseUrl: string;
  listKeys(): Promise<string[]>;
}

export async function startS3(t: ExecutionContext, bucket = 'updates'): Promise<TestS3> {
  const directory = await makeTempDir(t, 'kubeos-s3-');
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] });
  const address = (await server.run()) as { port: number };
  t.teardown(() => server.close());
  const endpoint = `http://127.0.0.1:${address.port}`;
  const client = makeS3Client({ endpoint, region: 'us-east-1', ...s3Credentials });
  t.teardown(() => client.destroy());
  return {
    endpoint,
    bucket,
    client,
    baseUrl: `${endpoint}/${bucket}/`,
    async listKeys() {
      const listed = await client.send(new ListObjectsV2Command({ Bucket: bucket }));
      return (listed.Contents ?? []).map((o) => o.Key ?? '').sort();
    },
  };
}
