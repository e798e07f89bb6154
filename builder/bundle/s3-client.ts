/** One S3 client setup for publishing: any S3-compatible endpoint, credentials from flags or the AWS chain. */
import { S3Client } from '@aws-sdk/client-s3';

export interface S3ClientOptions {
  /** e.g. http://127.0.0.1:9000; omitted means AWS S3 itself. */
  endpoint?: string | undefined;
  region?: string | undefined;
  /** When both are given they win; otherwise the standard chain (env, profile, SSO, IMDS...). */
  accessKeyId?: string | undefined;
  secretAccessKey?: string | undefined;
  sessionToken?: string | undefined;
  /** Path-style URLs (endpoint/bucket/key); the default with a custom endpoint. */
  forcePathStyle?: boolean | undefined;
}

/** The region a client uses: the one given, else AWS_REGION, AWS_DEFAULT_REGION, us-east-1. */
export function resolveRegion(region: string | undefined): string {
  return region ?? process.env['AWS_REGION'] ?? process.env['AWS_DEFAULT_REGION'] ?? 'us-east-1';
}

const silentLogger = { trace() {}, debug() {}, info() {}, warn() {}, error() {} };

export function makeS3Client(options: S3ClientOptions): S3Client {
  const credentials =
    options.accessKeyId !== undefined && options.secretAccessKey !== undefined
      ? { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey, sessionToken: options.sessionToken }
      : undefined;
  return new S3Client({
    endpoint: options.endpoint,
    region: resolveRegion(options.region),
    forcePathStyle: options.forcePathStyle ?? options.endpoint !== undefined,
    ...(credentials === undefined ? {} : { credentials }),
    // Default CRC trailers use aws-chunked encoding that many S3-compatible servers store verbatim.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // Library code never prints: failures surface as KubeosErrors (the SDK would console.warn).
    logger: silentLogger,
  });
}
