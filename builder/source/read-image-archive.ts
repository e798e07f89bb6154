/**
 * OCI image layouts (a directory or its tar) and `docker save` archives → their layers, applied
 * in manifest order, never unpacked whole. A tar's small JSON documents are read first (the
 * layers' data skipped). An uncompressed one's layers are then read where they lie (their
 * headers once more first, see find-covered-entries.ts); a compressed one streams again, each
 * layer applied as it goes past, and a layer that comes before its turn is spooled to the build's
 * work directory until then.
 */
import { createReadStream, createWriteStream, readFileSync } from 'node:fs';
import { open, stat } from 'node:fs/promises';
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import * as tar from 'tar-stream';
import { KubeosError } from '../../runtime/core/errors.js';
import { applyLayer, hashesOffThread, type LayerCheck, type StagingTree, type TarEntry } from './apply-layer.js';
import { StreamHasher } from '../../runtime/core/bundle/stream-hasher.js';
import { openDecompressor, readBytes } from './open-layer.js';
import { entrySegments } from './safe-path.js';
import { FileRangeReader } from './read-file-range.js';
import { findCoveredEntries, type LayerBytes } from './find-covered-entries.js';

export type ImageArchiveType = 'oci' | 'docker-archive';

export interface PlannedLayer {
  /** Path of the layer inside the layout or archive. */
  name: string;
  check: LayerCheck;
}

/** Small documents of an archive by path; undefined when absent. */
export type ReadDocument = (name: string) => Buffer | undefined;

const digestPattern = /^sha256:([0-9a-f]{64})$/;
const smallLimit = 4 * 1024 * 1024;
const documentsLimit = 64 * 1024 * 1024;
const indexTypes = ['application/vnd.oci.image.index.v1+json', 'application/vnd.docker.distribution.manifest.list.v2+json'];

function invalid(where: string, message: string): KubeosError {
  return new KubeosError('E_SOURCE_INVALID', `${where}: ${message}`, {
    hint: 'give an OCI image layout (directory or tar, e.g. from `skopeo copy ... oci-archive:`) or a `docker save` archive',
    details: { where },
  });
}

function parseJson(where: string, name: string, data: Buffer | undefined): unknown {
  if (data === undefined) throw invalid(where, `${name} is missing`);
  try {
    return JSON.parse(data.toString('utf8')) as unknown;
  } catch {
    throw invalid(where, `${name} is not valid JSON`);
  }
}

interface Descriptor { mediaType?: string; digest?: string; size?: number; annotations?: Record<string, string>; platform?: { os?: string; architecture?: string } }

function blobName(where: string, descriptor: Descriptor): string {
  const hex = digestPattern.exec(descriptor.digest ?? '')?.[1];
  if (hex === undefined) throw invalid(where, `descriptor digest ${JSON.stringify(descriptor.digest)} is not sha256:<64 hex digits>`);
  return `blobs/sha256/${hex}`;
}

/** A small blob named by a descriptor, checked against its digest. */
function readBlob(read: ReadDocument, where: string, descriptor: Descriptor): unknown {
  const name = blobName(where, descriptor);
  const data = read(name);
  if (data !== undefined) {
    const actual = `sha256:${createHash('sha256').update(data).digest('hex')}`;
    if (actual !== descriptor.digest) {
      throw new KubeosError('E_HASH_MISMATCH', `${where}: ${name} is ${actual}, its descriptor says ${descriptor.digest ?? ''}`, { details: { where, expected: descriptor.digest, actual } });
    }
  }
  return parseJson(where, name, data);
}

function chooseManifest(where: string, manifests: Descriptor[], ref: string | undefined): Descriptor {
  const named = (d: Descriptor) => d.annotations?.['org.opencontainers.image.ref.name'] ?? d.annotations?.['io.containerd.image.name'];
  if (ref !== undefined) {
    const found = manifests.filter((d) => named(d) === ref || named(d)?.endsWith(`:${ref}`));
    if (found.length === 1 && found[0] !== undefined) return found[0];
    throw invalid(where, `no single image is named ${JSON.stringify(ref)} (names: ${manifests.map(named).filter(Boolean).join(', ') || 'none'})`);
  }
  const amd64 = manifests.filter((d) => d.platform === undefined || (d.platform.architecture === 'amd64' && d.platform.os === 'linux'));
  if (manifests.length === 1 && manifests[0] !== undefined) return manifests[0];
  if (amd64.length === 1 && amd64[0] !== undefined) return amd64[0];
  throw invalid(where, `holds ${manifests.length} images: choose one with rootfs.ref (names: ${manifests.map(named).filter(Boolean).join(', ') || 'none'})`);
}

/** The layers of the image an OCI layout's index.json points to (through nested indexes). */
export function planOciLayers(read: ReadDocument, where: string, ref: string | undefined): PlannedLayer[] {
  const index = parseJson(where, 'index.json', read('index.json')) as { manifests?: Descriptor[] };
  if (!Array.isArray(index.manifests) || index.manifests.length === 0) throw invalid(where, 'index.json lists no manifests');
  let descriptor = chooseManifest(where, index.manifests, ref);
  for (let depth = 0; indexTypes.includes(descriptor.mediaType ?? ''); depth++) {
    if (depth > 4) throw invalid(where, 'image indexes nest too deep');
    const nested = readBlob(read, where, descriptor) as { manifests?: Descriptor[] };
    descriptor = chooseManifest(where, nested.manifests ?? [], undefined);
  }
  const manifest = readBlob(read, where, descriptor) as { layers?: Descriptor[] };
  if (!Array.isArray(manifest.layers)) throw invalid(where, `manifest ${descriptor.digest ?? ''} lists no layers`);
  return manifest.layers.map((layer) => ({ name: blobName(where, layer), check: { digest: layer.digest, size: layer.size } }));
}

/** The layers of the image a `docker save` archive's manifest.json names. */
export function planDockerLayers(read: ReadDocument, where: string, ref: string | undefined): PlannedLayer[] {
  const manifest = parseJson(where, 'manifest.json', read('manifest.json')) as { Config?: string; RepoTags?: string[] | null; Layers?: string[] }[];
  if (!Array.isArray(manifest) || manifest.length === 0) throw invalid(where, 'manifest.json lists no images');
  const chosen = ref === undefined ? (manifest.length === 1 ? manifest[0] : undefined) : manifest.find((m) => (m.RepoTags ?? []).some((t) => t === ref || t.endsWith(`:${ref}`) || t === `${ref}:latest`));
  if (chosen === undefined) throw invalid(where, `no single image${ref ? ` tagged ${JSON.stringify(ref)}` : ''}: choose one with rootfs.ref (tags: ${manifest.flatMap((m) => m.RepoTags ?? []).join(', ') || 'none'})`);
  if (typeof chosen.Config !== 'string' || !Array.isArray(chosen.Layers)) throw invalid(where, 'manifest.json has no Config and Layers');
  const configName = entrySegments(chosen.Config, 'config path', where).join('/');
  const config = parseJson(where, configName, read(configName)) as { rootfs?: { diff_ids?: string[] } };
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== chosen.Layers.length) throw invalid(where, `the config lists ${diffIds.length} layer digests for ${chosen.Layers.length} layers`);
  return chosen.Layers.map((layer, i) => {
    const name = entrySegments(layer, 'layer path', where).join('/');
    const hex = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(name)?.[1];
    return { name, check: { diffId: diffIds[i], ...(hex === undefined ? {} : { digest: `sha256:${hex}` }) } };
  });
}

/** Where a regular file's bytes lie in an uncompressed archive. */
interface Place {
  start: number;
  size: number;
}

function layerLabel(where: string, layer: PlannedLayer, i: number): string {
  return `${where}: layer ${i + 1} (${layer.name})`;
}

/** What a callback tells eachEntry: 'skip' — the entry's data is not wanted. */
type EntryVerdict = 'skip' | undefined;

/**
 * Iterates the entries of a (possibly compressed) outer tar; the callback consumes or skips each.
 * For an uncompressed archive it also gets where a regular file's data lies in the archive
 * (tar-stream's entry offset is its header's; the data follows that 512-byte block), and the data
 * of an entry it skips is not read at all.
 */
async function eachEntry(file: string, where: string, onEntry: (name: string, entry: TarEntry, place: Place | undefined) => Promise<EntryVerdict>, signal?: AbortSignal): Promise<void> {
  const handle = await open(file, 'r');
  try {
    const head = Buffer.alloc(8);
    await handle.read(head, 0, head.length, 0);
    const decompressor = await openDecompressor(head, where, signal);
    const raw = decompressor === undefined ? new FileRangeReader(handle, 0, (await handle.stat()).size, readBytes) : createReadStream(file, { highWaterMark: readBytes });
    const extract = tar.extract();
    const feeding = (pipeline as (...s: unknown[]) => Promise<void>)(...(decompressor ? [raw, decompressor.stream, extract] : [raw, extract]), { signal });
    feeding.catch(() => {});
    try {
      for await (const entry of extract) {
        const name = entrySegments(entry.header.name, 'entry', where).join('/');
        const regular = entry.header.type === 'file' || entry.header.type === 'contiguous-file';
        const place = decompressor === undefined && regular ? { start: entry.offset + 512, size: entry.header.size ?? 0 } : undefined;
        const verdict = await onEntry(name, entry, place);
        if (verdict === 'skip' && place !== undefined && raw instanceof FileRangeReader) raw.skip(place.start, place.start + place.size);
        for await (const _chunk of entry) { /* skip what the callback left */ }
      }
      await feeding;
      await decompressor?.finished();
    } catch (error) {
      raw.destroy();
      if (error instanceof KubeosError) throw error;
      const message = (error as Error).message ?? String(error);
      throw new KubeosError(/unexpected end/i.test(message) ? 'E_SOURCE_TRUNCATED' : 'E_SOURCE_INVALID', `${where} cannot be read as a tar archive: ${message}`, { cause: error, details: { where } });
    }
  } finally {
    await handle.close();
  }
}

async function readSmallDocuments(file: string, where: string, signal?: AbortSignal): Promise<{ documents: Map<string, Buffer>; places: Map<string, Place> }> {
  const documents = new Map<string, Buffer>();
  const places = new Map<string, Place>();
  let total = 0;
  await eachEntry(file, where, async (name, entry, place): Promise<EntryVerdict> => {
    // the first entry of a name is the one read (as the streaming pass below does)
    if (place !== undefined && !places.has(name)) places.set(name, place);
    const size = entry.header.size ?? 0;
    if (entry.header.type !== 'file' || size > smallLimit) return 'skip';
    const chunks: Buffer[] = [];
    for await (const chunk of entry) chunks.push(chunk as Buffer);
    const data = Buffer.concat(chunks);
    // JSON documents only (small layers are read in the second pass)
    if (data[0] !== 0x7b && data[0] !== 0x5b) return undefined;
    total += size;
    if (total > documentsLimit) throw invalid(where, `holds more than ${documentsLimit} bytes of JSON documents`);
    documents.set(name, data);
    return undefined;
  }, signal);
  return { documents, places };
}

export interface ImageArchiveSource {
  type: ImageArchiveType;
  path: string;
  ref: string | undefined;
}

export async function applyImageArchive(tree: StagingTree, source: ImageArchiveSource, work: string, signal?: AbortSignal): Promise<number> {
  const where = source.path;
  const plan = source.type === 'oci' ? planOciLayers : planDockerLayers;
  if ((await stat(source.path)).isDirectory()) {
    // a layout directory: its few small JSON documents are read on demand
    const read = (name: string) => {
      try {
        return readFileSync(join(source.path, ...entrySegments(name, 'document', where)));
      } catch {
        return undefined;
      }
    };
    const layers = plan(read, where, source.ref);
    const bytes: LayerBytes[] = [];
    for (const [i, layer] of layers.entries()) {
      const file = join(source.path, layer.name);
      const info = await stat(file).catch(() => undefined);
      if (info?.isFile() !== true) throw invalid(where, `${layerLabel(where, layer, i)} is missing`);
      bytes.push({ file, start: 0, size: info.size });
    }
    await applyLayerFiles(tree, where, layers, bytes, signal);
    return layers.length;
  }

  const { documents, places } = await readSmallDocuments(source.path, where, signal);
  const layers = plan((name) => documents.get(name), where, source.ref);
  // an uncompressed archive (what skopeo and docker save write): each layer is read in its turn
  // straight from where it lies, so a layer stored before its turn is not copied to the work
  // directory first
  if (layers.every((layer) => places.has(layer.name))) {
    await applyLayerFiles(tree, where, layers, layers.map((layer) => ({ file: source.path, ...(places.get(layer.name) as Place) })), signal);
    return layers.length;
  }
  const worker = holdHashWorker(layers);
  try {
    return await applySpooledLayers(tree, source, layers, work, signal);
  } finally {
    await worker?.close();
  }
}

/**
 * Layers that lie in files (a layout's blobs, or where an uncompressed archive holds them),
 * applied in order, leaving out what later layers remove (find-covered-entries.ts).
 */
async function applyLayerFiles(tree: StagingTree, where: string, layers: PlannedLayer[], bytes: LayerBytes[], signal?: AbortSignal): Promise<void> {
  const covered = await findCoveredEntries(bytes, where, signal);
  const worker = holdHashWorker(layers);
  try {
    for (const [i, layer] of layers.entries()) {
      const { file, start, size } = bytes[i] as LayerBytes;
      const handle = await open(file, 'r');
      try {
        await applyLayer(tree, new FileRangeReader(handle, start, start + size, readBytes), layerLabel(where, layer, i), layer.check, signal, covered?.[i]);
      } finally {
        await handle.close();
      }
    }
  } finally {
    await worker?.close();
  }
}

/**
 * The hashing worker, held from the first layer to the last when more than one layer is hashed
 * on it: each layer's tap would otherwise start and stop a worker of its own (17 ms each here).
 */
function holdHashWorker(layers: PlannedLayer[]): StreamHasher | undefined {
  return layers.filter((layer) => hashesOffThread(layer.check)).length > 1 ? new StreamHasher() : undefined;
}

/** A compressed archive, streamed once more: a layer that comes before its turn waits in `work`. */
async function applySpooledLayers(tree: StagingTree, source: ImageArchiveSource, layers: PlannedLayer[], work: string, signal?: AbortSignal): Promise<number> {
  const where = source.path;
  const label = (layer: PlannedLayer, i: number) => layerLabel(where, layer, i);
  let next = 0;
  const spooled = new Map<string, string>();
  const applyReady = async () => {
    for (let layer = layers[next]; layer !== undefined && spooled.has(layer.name); layer = layers[next]) {
      await applyLayer(tree, createReadStream(spooled.get(layer.name) as string, { highWaterMark: readBytes }), label(layer, next), layer.check, signal);
      next++;
    }
  };
  await eachEntry(source.path, where, async (name, entry): Promise<EntryVerdict> => {
    const due = layers.flatMap((layer, i) => (layer.name === name && i >= next ? [i] : []));
    if (due.length === 0 || spooled.has(name)) return 'skip';
    const layer = layers[next];
    if (due.length === 1 && due[0] === next && layer !== undefined) {
      await applyLayer(tree, Readable.from(entry), label(layer, next), layer.check, signal);
      next++;
    } else {
      const file = join(work, `layer-${spooled.size}`);
      await pipeline(entry, createWriteStream(file));
      spooled.set(name, file);
    }
    await applyReady();
    return undefined;
  }, signal);
  if (next < layers.length) throw invalid(where, `${label(layers[next] as PlannedLayer, next)} is not in the archive`);
  return layers.length;
}
