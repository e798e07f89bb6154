/** `kubeos bundle create|verify|info|diff`: signed update bundles. */
import type { Argv, CommandModule } from 'yargs';
import { createReadStream } from 'node:fs';
import { createBundle } from '../../bundle/create-bundle.js';
import { writeBundleChunks } from '../../bundle/write-bundle-chunks.js';
import { writeChunkPack } from '../../bundle/write-chunk-pack.js';
import { parseSourceDateEpoch, readBuildInfo, resolveMetadata } from '../../bundle/resolve-metadata.js';
import { loadPrivateKey, loadTrustedKeys } from '../../../runtime/core/crypto/keys.js';
import { readBundleFileHeader, verifyBundleFile } from '../../../runtime/core/bundle/verify-bundle-file.js';
import type { BundleManifest } from '../../../runtime/core/bundle/manifest.js';
import { KubeosError } from '../../../runtime/core/errors.js';
import { makeProgress, printResult, type GlobalArgs } from '../../../runtime/cli/output.js';
import { checkRootfsImage } from '../../bundle/check-rootfs.js';
import { diffImages, type ImageDiff } from '../../bundle/diff-images.js';

interface CreateArgs extends GlobalArgs {
  rootfs: string;
  'image-version'?: string;
  key: string;
  out: string;
  compatible?: string;
  'os-name'?: string;
  arch?: string;
  'kernel-version'?: string;
  index: boolean;
  chunks?: string;
}

interface VerifyArgs extends GlobalArgs {
  file: string;
  pubkey: string[];
  compatible?: string;
}

interface InfoArgs extends GlobalArgs {
  file: string;
}

interface DiffArgs extends GlobalArgs {
  old: string;
  new: string;
  pubkey?: string[];
}

function describeManifest(m: BundleManifest): string {
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  return [
    `${m.os} ${m.version} (${m.arch})`,
    `  compatible      ${m.compatible}`,
    `  kernel          ${m.kernelVersion}`,
    `  created         ${m.created}`,
    `  key             ${m.keyId}`,
    `  payload         ${m.payload.compression}, ${mib(m.payload.size)} compressed, ${mib(m.payload.uncompressedSize)} image`,
    `  payload sha256  ${m.payload.sha256}`,
    `  image sha256    ${m.payload.uncompressedSha256}`,
    `  chunks          ${m.payload.chunks.length} x ${mib(m.payload.chunkSize)}`,
    describeIndex(m),
  ].join('\n');
}

function describeIndex(m: BundleManifest): string {
  const rule = (r: { min: number; avg: number; max: number }) => `${r.min / 1024}/${r.avg / 1024}/${r.max / 1024} KiB`;
  const { index, indexObject } = m.payload;
  if (indexObject !== undefined) return `  delta index     ${indexObject.chunkCount} content-defined chunks (${rule(indexObject.rule)}), index object chunks/${indexObject.sha256}.zst (${indexObject.size} bytes)`;
  if (index !== undefined) return `  delta index     ${index.chunks.length} content-defined chunks (${rule(index.rule)}), inline`;
  return '  delta index     none (format 1: hosts take the full bundle)';
}

const create: CommandModule<GlobalArgs, CreateArgs> = {
  command: 'create',
  describe: 'Compress and sign a rootfs image into one bundle file (reproducible with SOURCE_DATE_EPOCH)',
  builder: (y) =>
    y
      .version(false)
      .option('rootfs', { type: 'string', demandOption: true, describe: 'The rootfs image (build.json next to it supplies defaults)' })
      // --image-version as on build and agent upgrade; --version, its first name, still works
      .option('image-version', { type: 'string', alias: 'version', describe: 'OS version of this update, e.g. 2.0.0 (default: build.json next to --rootfs)' })
      .option('key', { type: 'string', demandOption: true, describe: 'Private signing key (signing.pem from kubeos keygen)' })
      .option('out', { type: 'string', demandOption: true, describe: 'Bundle file to write' })
      .option('compatible', { type: 'string', describe: 'String a host must match to install it' })
      .option('os-name', { type: 'string', describe: 'OS name' })
      .option('arch', { type: 'string', describe: 'Architecture (default x86_64)' })
      .option('kernel-version', { type: 'string', describe: 'Kernel version inside the image' })
      .option('index', { type: 'boolean', default: true, describe: 'Sign a content-defined chunk index into the manifest, for delta installs (--no-index: a format 1 bundle)' })
      .option('chunks', { type: 'string', describe: 'Also write the chunk store: each chunk as DIR/<sha256>.zst, skipping those already there, and the new ones again as one pack (DIR/packs/<image sha256>.pack and .map) that hosts read by ranges (kubeos publish uploads them itself)' })
      .example('SOURCE_DATE_EPOCH=1700000000 $0 bundle create --rootfs out/v2/rootfs.img --key keys/signing.pem --out v2.kubeos', 'version, compatible and kernel from out/v2/build.json; the same inputs give the same bytes'),
  handler: async (args) => {
    if (args.chunks !== undefined && !args.index) {
      throw new KubeosError('E_USAGE', `--chunks ${args.chunks} needs the chunk index that --no-index leaves out`, { hint: 'drop --no-index, or --chunks' });
    }
    await checkRootfsImage(args.rootfs);
    const build = await readBuildInfo(args.rootfs);
    const metadata = resolveMetadata(
      { os: args['os-name'], version: args['image-version'], arch: args.arch, compatible: args.compatible, kernelVersion: args['kernel-version'] },
      build?.info,
    );
    const created = await createBundle({
      rootfs: args.rootfs,
      out: args.out,
      privateKey: await loadPrivateKey(args.key),
      metadata,
      sourceDateEpoch: parseSourceDateEpoch(process.env['SOURCE_DATE_EPOCH']),
      ...(args.index ? {} : { index: 'none' as const }),
      onProgress: makeProgress(args),
    });
    // the index bundle create cut is the one its manifest signs: the chunk files are cut by it
    const chunks = args.chunks === undefined || created.index === undefined ? undefined : await writeBundleChunks(createReadStream(args.rootfs), created.manifest, args.chunks, { index: created.index });
    const object = chunks?.indexObject;
    const pack = chunks === undefined ? undefined : await writeChunkPack(args.chunks!, chunks.index, chunks.written, created.manifest.payload.uncompressedSha256);
    printResult(args, {
      path: created.path, size: created.size, sha256: created.sha256, manifest: created.manifest,
      ...(chunks === undefined ? {} : { chunks: { dir: args.chunks, written: chunks.written.length, skipped: chunks.skipped, compressedBytes: chunks.compressedBytes, pack: pack ?? null, ...(object === undefined ? {} : { indexObject: object }) } }),
    }, () =>
      `wrote ${created.path} (${created.size} bytes, sha256 ${created.sha256})\n${describeManifest(created.manifest)}${chunks === undefined ? '' : `\n  chunk store     ${args.chunks}: ${chunks.written.length} written (${chunks.compressedBytes} bytes), ${chunks.skipped} already there${pack === undefined ? '' : `; pack ${pack.pack} of ${pack.chunks} chunks`}`}${object === undefined ? '' : `\n  index object    ${object.sha256}.zst${object.written ? ` written (${object.compressedBytes} bytes)` : ' already there'}`}`,
    );
  },
};

const verify: CommandModule<GlobalArgs, VerifyArgs> = {
  command: 'verify <file>',
  describe: 'Check signature, manifest and every payload hash; the error code names the failed check',
  builder: (y) =>
    y
      .positional('file', { type: 'string', demandOption: true, describe: 'Bundle file' })
      .option('pubkey', { type: 'string', array: true, demandOption: true, describe: 'Trusted public key (repeatable)' })
      .option('compatible', { type: 'string', describe: 'Also require this compatible string' })
      .example('$0 bundle verify v2.kubeos --pubkey keys/signing.pub.pem --compatible kubeos-minimal-x86_64', 'every check a host makes before it writes a slot') as Argv<VerifyArgs>,
  handler: async (args) => {
    const verified = await verifyBundleFile(args.file, { trustedKeys: await loadTrustedKeys(args.pubkey), compatible: args.compatible });
    const checks = ['signature', 'manifest', 'payload sha256', `${verified.manifest.payload.chunks.length} chunk hashes`, 'image sha256', 'sizes'];
    printResult(args, { ok: true, keyId: verified.keyId, size: verified.size, sha256: verified.sha256, checks, manifest: verified.manifest }, () =>
      `ok: ${args.file} verifies (${checks.join(', ')})\n${describeManifest(verified.manifest)}`,
    );
  },
};

const info: CommandModule<GlobalArgs, InfoArgs> = {
  command: 'info <file>',
  describe: 'Print the manifest of a bundle (NOT verified; use bundle verify)',
  builder: (y) => y.positional('file', { type: 'string', demandOption: true, describe: 'Bundle file' })
    .example('$0 bundle info v2.kubeos --json', 'the manifest, to read a version or a compatible string in a script') as Argv<InfoArgs>,
  handler: async (args) => {
    const header = await readBundleFileHeader(args.file);
    printResult(args, { manifest: header.manifest, signature: { keyid: header.signature.keyid }, verified: false }, () =>
      `${describeManifest(header.manifest)}\n  signed by       ${header.signature.keyid} (not verified)`,
    );
  },
};

function describeDiff(d: ImageDiff): string {
  const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;
  const pct = (n: number, of: number) => (of === 0 ? '0%' : `${((100 * n) / of).toFixed(1)}%`);
  const side = (s: ImageDiff['old']) => `${s.path} (${s.kind === 'bundle' ? `bundle ${s.version ?? ''}, ${s.verified ? 'signature verified' : 'signature NOT verified'}` : 'image'})`;
  const rule = d.rule.kind === 'cdc' ? `content-defined, ${d.rule.min / 1024}/${d.rule.avg / 1024}/${d.rule.max / 1024} KiB min/avg/max` : `fixed ${d.rule.size / 1024} KiB`;
  const lines = [
    `a host on OLD fetches ${d.missingChunks} of ${d.chunks} chunks of NEW: ${mib(d.missingBytes)} of ${mib(d.bytes)} (${pct(d.missingBytes, d.bytes)})`,
    `  OLD             ${side(d.old)}`,
    `  NEW             ${side(d.new)}`,
    `  chunks          ${rule}`,
    `  reused          ${mib(d.reusedBytes)} already on OLD`,
  ];
  if (d.missingCompressed !== undefined) lines.push(`  compressed      ~${mib(d.missingCompressed)} (zstd of the missing chunks)`);
  const headerBytes = d.header === undefined ? 0 : d.header.bundleBytes + (d.header.indexObjectBytes ?? 0);
  if (d.header !== undefined) {
    lines.push(`  header          ${headerBytes} bytes before any chunk: ${d.header.bundleBytes} of the bundle${d.header.indexObjectBytes === undefined ? ' (its inline index included)' : ` + ${d.header.indexObjectBytes} of the index object`}`);
  }
  if (d.fullBundle !== undefined) {
    const fetched = (d.missingCompressed ?? d.missingBytes) + headerBytes;
    lines.push(`  full bundle     ${d.fullBundle.estimated ? '~' : ''}${mib(d.fullBundle.bytes)}${d.fullBundle.estimated ? ' (zstd of NEW\'s image)' : ''}; the delta is ${pct(fetched, d.fullBundle.bytes)} of it`);
  }
  return lines.join('\n');
}

const diff: CommandModule<GlobalArgs, DiffArgs> = {
  command: 'diff <old> <new>',
  describe: 'How much a host on OLD would download to get NEW if it fetched only the chunks it does not hold (each a bundle or a rootfs image)',
  builder: (y) =>
    y
      .positional('old', { type: 'string', demandOption: true, describe: 'What the host runs: a bundle file or a rootfs image' })
      .positional('new', { type: 'string', demandOption: true, describe: 'The update: a bundle file or a rootfs image' })
      .option('pubkey', { type: 'string', array: true, describe: 'Check bundle signatures against this public key (repeatable); without it a bundle is read unverified, its hashes still checked' })
      .example('$0 bundle diff out/v1/rootfs.img v2.kubeos --pubkey keys/signing.pub.pem', 'chunks and bytes a host on v1 would fetch for v2, against the full bundle')
      .example('$0 bundle diff v1.kubeos v2.kubeos --json', 'the same as JSON, for a release pipeline') as Argv<DiffArgs>,
  handler: async (args) => {
    const trustedKeys = args.pubkey === undefined || args.pubkey.length === 0 ? undefined : await loadTrustedKeys(args.pubkey);
    const result = await diffImages(args.old, args.new, { trustedKeys, onProgress: makeProgress(args) });
    printResult(args, result, () => describeDiff(result));
  },
};

export const bundleCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'bundle <command>',
  describe: 'Create, verify and inspect signed update bundles',
  builder: (y) => y.command(create).command(verify).command(info).command(diff).demandCommand(1, 'name a bundle command: create, verify, info or diff'),
  handler: () => {},
};
