/**
 * A host for delta installs: slot A holds v1, and v2 is v1 with a few regions rewritten, bundled
 * as format 2 and served with its chunk store (chunks/) from 127.0.0.1.
 */
import { randomBytes } from 'node:crypto';
import { open, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import type { IndexForm } from '../../builder/bundle/create-bundle.js';
import { writeChunkFiles } from '../../builder/bundle/write-chunk-files.js';
import { defaultCdcRule, indexBuffer } from '../../runtime/core/bundle/chunk-index.js';
import { makeBundle } from '../helpers/bundle-fixtures.js';
import { publishToDir, startUpdateServer } from '../helpers/update-server.js';
import { makeHost, MiB, readSlot, sha256, slotOffsets, type Host } from './host-fixture.js';

export const imageSize = 6 * MiB + 4321;

/**
 * v1's first imageSize bytes with `regions` 4 KiB regions rewritten, spread evenly. The store has
 * no pack unless `pack` (so chunks are fetched one GET each, the path these tests probe); with
 * `v1Published`, the store held v1's chunks before v2 was published, as after a release of v1.
 */
export async function makeDeltaHost(t: ExecutionContext, options: { regions?: number; pack?: boolean; v1Published?: boolean; index?: IndexForm } = {}) {
  const host = await makeHost(t);
  const v1 = await readSlot(host, 'A');
  const image = Buffer.from(v1.subarray(0, imageSize));
  const regions = options.regions ?? 3;
  for (let i = 0; i < regions; i++) randomBytes(4096).copy(image, Math.floor(((i + 0.5) * imageSize) / regions));
  const rootfs = join(host.dir, 'v2.img');
  await writeFile(rootfs, image);
  const v2 = await makeBundle(host.dir, host.keys, { rootfs, name: 'v2', ...(options.index === undefined ? {} : { index: options.index }) });
  const site = join(host.dir, 'site');
  if (options.v1Published === true) {
    // v1 is all of slot A (the host has no image size for it, and indexes the whole slot)
    await writeChunkFiles([v1], { rule: defaultCdcRule, chunks: indexBuffer(v1).map((c) => [c.length, c.sha256]) }, join(site, 'chunks'));
  }
  await publishToDir(site, v2, host.keys.privateKey, { serial: 1, chunks: true, pack: options.pack ?? false });
  const server = await startUpdateServer(t, site);
  return { host, v2, image, imageSha256: sha256(image), site, server, channelUrl: `${server.url}/channels/stable.json` };
}

/** The chunks of v2 that slot A does not hold (what a delta fetches), by sha256. */
export async function missingChunks(host: Host, v2: Awaited<ReturnType<typeof makeBundle>>): Promise<string[]> {
  const { indexBuffer } = await import('../../runtime/core/bundle/chunk-index.js');
  const held = new Set(indexBuffer(await readSlot(host, 'A')).map((c) => c.sha256));
  return v2.index!.chunks.map(([, s]) => s).filter((s) => !held.has(s));
}

export async function flipSlotByte(host: Host, slot: 'A' | 'B', offset: number): Promise<void> {
  const handle = await open(host.disk, 'r+');
  try {
    const byte = Buffer.alloc(1);
    await handle.read(byte, 0, 1, slotOffsets[slot] + offset);
    byte[0] = byte[0]! ^ 0x01;
    await handle.write(byte, 0, 1, slotOffsets[slot] + offset);
  } finally {
    await handle.close();
  }
}

export async function removeChunk(site: string, sha256: string): Promise<void> {
  await rm(join(site, 'chunks', `${sha256}.zst`));
}

export async function replaceChunk(site: string, sha256: string, data: Buffer): Promise<void> {
  await writeFile(join(site, 'chunks', `${sha256}.zst`), data);
}

export { readFile };
