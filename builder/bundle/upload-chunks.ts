/**
 * The chunk store of a format 2 bundle in the bucket: `chunks/<sha256>.zst` beside `bundles/`, one
 * zstd frame per chunk of the signed index, shared by every release. Chunks already in the bucket
 * (listed once) are neither compressed nor uploaded again, so a release that changes little
 * uploads little. The chunks come from the bundle itself, through the same verifying reader as the
 * hosts' (every chunk checked against the signed index before it is stored). The chunks uploaded
 * now go up a second time as the release's pack (`chunks/packs/<image sha256>.pack` and `.map`,
 * chunk-pack.ts), so a host fetches runs of them by Range instead of one GET a chunk.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { ChunkIndexInfo } from '../../runtime/core/bundle/manifest.js';
import { readBundle } from '../../runtime/core/bundle/read-bundle.js';
import { chunkPath, objectKey } from '../../runtime/core/channel/layout.js';
import type { TrustedKeys } from '../../runtime/core/crypto/keys.js';
import type { KubeosError } from '../../runtime/core/errors.js';
import { writeChunkFiles } from './write-chunk-files.js';
import { writeChunkPack } from './write-chunk-pack.js';
import { uploadFile } from './upload-file.js';
import { packPaths } from '../../runtime/core/bundle/chunk-pack.js';

export interface ChunkUpload {
  /** Distinct chunks in the bundle's index. */
  chunks: number;
  uploaded: number;
  alreadyStored: number;
  /** Compressed bytes uploaded now. */
  uploadedBytes: number;
  /** The pack of the chunks uploaded now (hosts fetch runs of it by Range), when one was written. */
  pack?: { key: string; chunks: number; bytes: number };
}

export interface UploadChunksOptions {
  client: S3Client;
  bucket: string;
  prefix?: string | undefined;
  bundle: string;
  index: ChunkIndexInfo;
  /** The image's signed sha256: the name of its pack. */
  uncompressedSha256: string;
  trustedKeys: TrustedKeys;
  signal?: AbortSignal | undefined;
  /** Turns an S3 failure into the publisher's error (which names endpoint, bucket, credentials). */
  fail: (what: string, error: unknown) => KubeosError;
  onBytes?: (done: number, total: number) => void;
}

const inFlight = 4;

export async function uploadChunks(options: UploadChunksOptions): Promise<ChunkUpload> {
  const { client, bucket, signal } = options;
  const folder = objectKey(options.prefix, 'chunks/');
  const stored = new Set<string>();
  const maps = new Set<string>();
  let token: string | undefined;
  do {
    let page;
    try {
      page = await client.send(new ListObjectsV2Command({ Bucket: bucket, Prefix: folder, ContinuationToken: token }), { abortSignal: signal });
    } catch (error) {
      throw options.fail(`listing s3://${bucket}/${folder}`, error);
    }
    for (const object of page.Contents ?? []) {
      const match = /([0-9a-f]{64})\.zst$/.exec(object.Key ?? '');
      if (match !== null && (object.Size ?? 0) > 0) stored.add(match[1]!);
      if (object.Key !== undefined && object.Key.endsWith('.map')) maps.add(object.Key);
    }
    token = page.IsTruncated ? page.NextContinuationToken : undefined;
  } while (token !== undefined);

  const distinct = new Set(options.index.chunks.map(([, sha256]) => sha256));
  const missing = [...distinct].filter((sha256) => !stored.has(sha256));
  const result: ChunkUpload = { chunks: distinct.size, uploaded: 0, alreadyStored: distinct.size - missing.length, uploadedBytes: 0 };
  if (missing.length === 0) return result;

  const scratch = await mkdtemp(join(tmpdir(), 'kubeos-chunks-'));
  try {
    const bundle = await readBundle(createReadStream(options.bundle), { trustedKeys: options.trustedKeys, signal });
    const written = await writeChunkFiles(bundle.payload, options.index, scratch, { skip: (sha256) => stored.has(sha256), signal });
    const queue = [...written.written];
    let done = 0;
    const worker = async () => {
      for (let sha256 = queue.shift(); sha256 !== undefined; sha256 = queue.shift()) {
        // small objects, read whole: PutObject gets a Buffer and its ContentLength
        const body = await readFile(join(scratch, `${sha256}.zst`));
        const key = objectKey(options.prefix, chunkPath(sha256));
        try {
          await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentLength: body.length, ContentType: 'application/zstd' }), { abortSignal: signal });
        } catch (error) {
          // the other workers stop at their next chunk: one failure fails the publish
          queue.length = 0;
          throw options.fail(`uploading s3://${bucket}/${key}`, error);
        }
        result.uploaded++;
        result.uploadedBytes += body.length;
        options.onBytes?.(++done, written.written.length);
      }
    };
    // every worker ends (one that failed empties the queue for the rest) before the scratch goes
    const settled = await Promise.allSettled(Array.from({ length: inFlight }, worker));
    const failure = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failure !== undefined) throw failure.reason;
    // the pack after its chunks, its map last: a map in the bucket means the pack is whole
    const paths = packPaths(options.uncompressedSha256);
    const mapKey = objectKey(options.prefix, `chunks/${paths.map}`);
    if (!maps.has(mapKey)) {
      const pack = await writeChunkPack(scratch, options.index, written.written, options.uncompressedSha256, signal);
      if (pack !== undefined) {
        const packKey = objectKey(options.prefix, `chunks/${paths.pack}`);
        try {
          await uploadFile({ client, bucket, key: packKey, path: join(scratch, pack.pack), size: pack.bytes, contentType: 'application/octet-stream', metadata: {}, signal });
        } catch (error) {
          throw options.fail(`uploading s3://${bucket}/${packKey}`, error);
        }
        const map = await readFile(join(scratch, pack.map));
        try {
          await client.send(new PutObjectCommand({ Bucket: bucket, Key: mapKey, Body: map, ContentLength: map.length, ContentType: 'application/octet-stream' }), { abortSignal: signal });
        } catch (error) {
          throw options.fail(`uploading s3://${bucket}/${mapKey}`, error);
        }
        result.pack = { key: packKey, chunks: pack.chunks, bytes: pack.bytes };
      }
    }
    return result;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
