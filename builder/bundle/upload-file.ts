/**
 * Uploads one file to S3 without reading it into memory: a single PutObject with ContentLength for
 * small files, multipart (parts streamed from file ranges, a few in flight) for large ones. S3 makes
 * an object visible only when PutObject or CompleteMultipartUpload succeeds, so a failed upload
 * leaves nothing at the key; a failed multipart upload is aborted.
 */
import { createReadStream } from 'node:fs';
import { Transform } from 'node:stream';
import {
  AbortMultipartUploadCommand,
  CompleteMultipartUploadCommand,
  CreateMultipartUploadCommand,
  PutObjectCommand,
  UploadPartCommand,
  type S3Client,
} from '@aws-sdk/client-s3';

/** S3's smallest part (all but the last). */
export const minPartSize = 5 * 1024 * 1024;
export const defaultPartSize = 16 * 1024 * 1024;
export const defaultMultipartThreshold = 64 * 1024 * 1024;
const partsInFlight = 3;
const partAttempts = 3;

export interface UploadFileOptions {
  client: S3Client;
  bucket: string;
  key: string;
  path: string;
  size: number;
  contentType: string;
  metadata: Record<string, string>;
  partSize?: number;
  multipartThreshold?: number;
  signal?: AbortSignal | undefined;
  onBytes?: (sent: number) => void;
}

function countingStream(path: string, start: number, end: number, onBytes: (n: number) => void): Transform {
  const counter = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      onBytes(chunk.length);
      callback(null, chunk);
    },
  });
  const source = createReadStream(path, { start, end: end - 1 });
  source.on('error', (error) => counter.destroy(error));
  return source.pipe(counter);
}

export async function uploadFile(options: UploadFileOptions): Promise<void> {
  const { client, bucket, key, path, size, signal } = options;
  const partSize = Math.max(options.partSize ?? defaultPartSize, minPartSize);
  const threshold = options.multipartThreshold ?? defaultMultipartThreshold;
  let sent = 0;
  const onBytes = (n: number) => {
    sent += n;
    options.onBytes?.(sent);
  };

  if (size <= threshold) {
    await client.send(
      new PutObjectCommand({
        Bucket: bucket,
        Key: key,
        Body: countingStream(path, 0, size, onBytes),
        ContentLength: size,
        ContentType: options.contentType,
        Metadata: options.metadata,
      }),
      { abortSignal: signal },
    );
    return;
  }

  const created = await client.send(
    new CreateMultipartUploadCommand({ Bucket: bucket, Key: key, ContentType: options.contentType, Metadata: options.metadata }),
    { abortSignal: signal },
  );
  const uploadId = created.UploadId;
  if (uploadId === undefined) throw new Error('CreateMultipartUpload returned no UploadId');
  try {
    const count = Math.ceil(size / partSize);
    const etags: string[] = new Array<string>(count);
    // The SDK never retries a streamed body, so a part is retried here with a fresh file stream.
    const uploadPart = async (partNumber: number, start: number, end: number): Promise<string> => {
      for (let attempt = 1; ; attempt++) {
        let partSent = 0;
        try {
          const result = await client.send(
            new UploadPartCommand({
              Bucket: bucket,
              Key: key,
              UploadId: uploadId,
              PartNumber: partNumber,
              Body: countingStream(path, start, end, (n) => {
                partSent += n;
                onBytes(n);
              }),
              ContentLength: end - start,
            }),
            { abortSignal: signal },
          );
          if (result.ETag === undefined) throw new Error(`UploadPart ${partNumber} returned no ETag`);
          return result.ETag;
        } catch (error) {
          onBytes(-partSent);
          if (attempt >= partAttempts || signal?.aborted) throw error;
          await new Promise((resolve) => setTimeout(resolve, 250 * attempt));
        }
      }
    };
    let next = 0;
    let failed = false;
    const worker = async () => {
      while (next < count && !failed) {
        const index = next++;
        const start = index * partSize;
        const end = Math.min(size, start + partSize);
        etags[index] = await uploadPart(index + 1, start, end);
      }
    };
    const guarded = () =>
      worker().catch((error: unknown) => {
        failed = true; // stop the other workers from starting parts nobody will complete
        throw error;
      });
    await Promise.all(Array.from({ length: Math.min(partsInFlight, count) }, guarded));
    await client.send(
      new CompleteMultipartUploadCommand({
        Bucket: bucket,
        Key: key,
        UploadId: uploadId,
        MultipartUpload: { Parts: etags.map((ETag, i) => ({ ETag, PartNumber: i + 1 })) },
      }),
      { abortSignal: signal },
    );
  } catch (error) {
    // Best effort, and deliberately without the (maybe aborted) signal; some servers lack it.
    await client.send(new AbortMultipartUploadCommand({ Bucket: bucket, Key: key, UploadId: uploadId })).catch(() => {});
    throw error;
  }
}
