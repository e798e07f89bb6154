/**
 * The chunk store of a format 2 bundle in the bucket: `chunks/<sha256>.zst` beside `bundles/`, one
 * zstd frame per chunk of the signed index, shared by every release, and the bundle's index object
 * (when its manifest names one) stored the same way, uploaded after the chunks. Chunks already in
 * the bucket (listed once) are neither compressed nor uploaded again, so a release that changes
 * little uploads little. The chunks come from the bundle itself, through the same verifying reader
 * as the hosts'; for an index object the index is cut from the payload in the same pass and must
 * be the signed one (write-bundle-chunks.ts) before anything is uploaded. The chunks uploaded now
 * go up a second time as the release's pack (`chunks/packs/<image sha256>.pack` and `.map`,
 * chunk-pack.ts), so a host fetches runs of them by Range instead of one GET a chunk.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ListObjectsV2Command, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import type { BundleManifest } from '../../runtime/core/bundle/manifest.js';
import { readBundle } from '../../runtime/core/bundle/read-bundle.js';
import { chunkPath, objectKey } from '../../runtime/core/channel/layout.js';
import type { TrustedKeys } from '../../runtime/core/crypto/keys.js';
import type { KubeosError } from '../../runtime/core/errors.js';
import { writeBundleChunks } from './write-bundle-chunks.js';
import { writeChunkPack } from './write-chunk-pack.js';
import { uploadFile } from './upload-file.js';
import { packPaths } from '../../runtime/core/bundle/chunk-pack.js';

export interface ChunkUpload {
  /** Distinct chunks in the bundle's index. */
  chunks: number;
  uploaded: number;
  alreadyStored: number;
  /** Compressed bytes uploaded now (the index object's included). */
  uploadedBytes: number;
  /** The index object, for a bundle whose manifest names one: its key, and whether it was uploaded now (false: stored already). */
  indexObject?: { key: string; uploaded: boolean; bytes: number };
  /** The pack of the chunks uploaded now (hosts fetch runs of it by Range), when one was written. */
  pack?: { key: string; chunks: number; bytes: number };
}

export interface UploadChunksOptions {
  client: S3Client;
  bucket: string;
  prefix?: string | undefined;
  bundle: string;
  /** The bundle's verified manifest: its inline index or its index object. */
  manifest: BundleManifest;
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

  // the inline index says what is missing before the bundle is read; an index object is cut from it
  const inline = options.manifest.payload.index;
  if (inline !== undefined) {
    const distinct = new Set(inline.chunks.map(([, sha256]) => sha256));
    if ([...distinct].every((sha256) => stored.has(sha256))) return { chunks: distinct.size, uploaded: 0, alreadyStored: distinct.size, uploadedBytes: 0 };
  }

  const scratch = await mkdtemp(join(tmpdir(), 'kubeos-chunks-'));
  try {
    const bundle = await readBundle(createReadStream(options.bundle), { trustedKeys: options.trustedKeys, signal });
    const written = await writeBundleChunks(bundle.payload, bundle.manifest, scratch, { skip: (sha256) => stored.has(sha256), signal });
    const distinct = new Set(written.index.chunks.map(([, sha256]) => sha256)).size;
    const result: ChunkUpload = { chunks: distinct, uploaded: 0, alreadyStored: distinct - written.written.length, uploadedBytes: 0 };
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
    const uncompressedSha256 = bundle.manifest.payload.uncompressedSha256;
    const paths = packPaths(uncompressedSha256);
    const mapKey = objectKey(options.prefix, `chunks/${paths.map}`);
    if (!maps.has(mapKey)) {
      const pack = await writeChunkPack(scratch, written.index, written.written, uncompressedSha256, signal);
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
    // last of all: a bucket that holds the index object holds every chunk it names
    const object = written.indexObject;
    if (object !== undefined) {
      const key = objectKey(options.prefix, chunkPath(object.sha256));
      result.indexObject = { key, uploaded: false, bytes: 0 };
      if (object.written) {
        const body = await readFile(join(scratch, `${object.sha256}.zst`));
        try {
          await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentLength: body.length, ContentType: 'application/zstd' }), { abortSignal: signal });
        } catch (error) {
          throw options.fail(`uploading s3://${bucket}/${key}`, error);
        }
        result.indexObject = { key, uploaded: true, bytes: body.length };
        result.uploadedBytes += body.length;
      }
    }
    return result;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}
