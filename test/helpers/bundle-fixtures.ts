/** Shared fixtures for bundle, channel and publish tests: temp dirs, keys, rootfs files, tar offsets. */
import { randomBytes, createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ExecutionContext } from 'ava';
import { createBundle, type CreatedBundle, type IndexForm } from '../../builder/bundle/create-bundle.js';
import type { BundleMetadata } from '../../builder/bundle/resolve-metadata.js';
import { generateKeyPair, makeTrustedKeys, parsePrivateKey, parsePublicKey, type TrustedKeys } from '../../runtime/core/crypto/keys.js';
import { findTool, run } from '../../runtime/core/exec.js';
import type { KeyObject } from 'node:crypto';


export interface TestKeys {
  keyId: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  trusted: TrustedKeys;
  privatePath: string;
  publicPath: string;
}

export async function makeKeys(dir: string, name = 'signing'): Promise<TestKeys> {
  const pair = generateKeyPair();
  const privatePath = join(dir, `${name}.pem`);
  const publicPath = join(dir, `${name}.pub.pem`);
  await writeFile(privatePath, pair.privatePem, { mode: 0o600 });
  await writeFile(publicPath, pair.publicPem);
  const publicKey = parsePublicKey(pair.publicPem);
  return { keyId: pair.keyId, privateKey: parsePrivateKey(pair.privatePem), publicKey, trusted: makeTrustedKeys([publicKey]), privatePath, publicPath };
}

export const metadata: BundleMetadata = {
  os: 'kubeos',
  version: '2.0.0',
  arch: 'x86_64',
  compatible: 'kubeos-test-x86_64',
  kernelVersion: '6.1.0-test',
};

/**
 * Random (incompressible) head plus zeros, so payloads have real compressed size quickly; it carries
 * ext4's superblock magic, as `bundle create --rootfs` asks of a filesystem image.
 */
export async function makeRootfs(path: string, size: number, randomPart = Math.min(size, 3 * 1024 * 1024)): Promise<string> {
  const data = Buffer.concat([randomBytes(randomPart), Buffer.alloc(size - randomPart)]);
  if (data.length >= 1082) data.writeUInt16LE(0xef53, 1080);
  await writeFile(path, data);
  return path;
}

/** A real ext4 image made by mke2fs -d; undefined (test skipped) when mke2fs is missing outside CI. */
export async function makeExt4Rootfs(t: ExecutionContext, dir: string, sizeMiB = 32): Promise<string | undefined> {
  if ((await findTool('mke2fs')) === undefined && process.env['CI'] !== 'true') return undefined;
  const tree = join(dir, 'tree');
  await mkdir(join(tree, 'etc'), { recursive: true });
  await writeFile(join(tree, 'etc/os-release'), 'NAME=kubeos\nVERSION_ID=2.0.0\n');
  await writeFile(join(tree, 'random.bin'), randomBytes(1024 * 1024));
  const image = join(dir, 'rootfs.img');
  const epoch = process.env['SOURCE_DATE_EPOCH'] ?? '1700000000';
  await run('mke2fs', ['-q', '-t', 'ext4', '-F', '-E', `root_owner=0:0`, '-U', '6b1f2c3d-0000-4000-8000-000000000001', '-d', tree, image, `${sizeMiB}M`], {
    env: { E2FSPROGS_FAKE_TIME: epoch },
  });
  t.log(`ext4 rootfs ${image}`);
  return image;
}

export async function makeBundle(dir: string, keys: TestKeys, options: { size?: number; version?: string; name?: string; rootfs?: string; incompressible?: boolean; index?: IndexForm } = {}): Promise<CreatedBundle> {
  const size = options.size ?? 6 * 1024 * 1024;
  const rootfs = options.rootfs ?? (await makeRootfs(join(dir, `${options.name ?? 'rootfs'}.img`), size, options.incompressible ? size : undefined));
  return createBundle({
    rootfs,
    out: join(dir, `${options.name ?? 'bundle'}.kubeos`),
    privateKey: keys.privateKey,
    metadata: { ...metadata, version: options.version ?? metadata.version },
    sourceDateEpoch: 1700000000,
    ...(options.index === undefined ? {} : { index: options.index }),
  });
}

export interface TarMember {
  name: string;
  dataOffset: number;
  size: number;
}

/** Member offsets of a small tar held in memory (tests only). */
export function listTarMembers(tar: Buffer): TarMember[] {
  const members: TarMember[] = [];
  let offset = 0;
  while (offset + 512 <= tar.length && tar[offset] !== 0) {
    const name = tar.subarray(offset, offset + 100).toString('utf8').replace(/\0.*$/s, '');
    const size = parseInt(tar.subarray(offset + 124, offset + 136).toString('utf8').replace(/\0.*$/s, '').trim(), 8);
    members.push({ name, dataOffset: offset + 512, size });
    offset += 512 + Math.ceil(size / 512) * 512;
  }
  return members;
}

export function member(tar: Buffer, name: string): TarMember {
  const found = listTarMembers(tar).find((m) => m.name === name);
  if (found === undefined) throw new Error(`no member ${name}`);
  return found;
}

/** A copy with one byte flipped at offset. */
export function flipByte(buffer: Buffer, offset: number): Buffer {
  const copy = Buffer.from(buffer);
  copy[offset] = (copy[offset] ?? 0) ^ 0x01;
  return copy;
}

export async function sha256File(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}
