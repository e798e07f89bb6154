/** `kubeos build`: thin yargs wrapper over buildImage. */
import type { CommandModule } from 'yargs';
import { parseSourceDateEpoch } from '../../bundle/resolve-metadata.js';
import { buildImage, diskFormats, type DiskFormat } from '../../build/build-image.js';
import { formatSize } from '../../layout/size.js';
import { makeProgress, printResult, type GlobalArgs } from '../../../runtime/cli/output.js';

interface BuildArgs extends GlobalArgs {
  image: string;
  out: string;
  layout?: string;
  format: DiskFormat;
  imageVersion?: string;
  trustedKey?: string[];
  channel?: string;
  updateServer?: string;
  updates?: 'channel' | 'cluster';
}

export const buildCommand: CommandModule<GlobalArgs, BuildArgs> = {
  command: 'build [image]',
  describe: 'Build a bootable GPT disk image and its rootfs.img from an image definition',
  builder: (y) => y
    .positional('image', { type: 'string', default: 'minimal', describe: 'Image definition: a directory with image.json, or a name in images/' })
    .option('out', { alias: 'o', type: 'string', default: 'out', describe: 'Output directory: new, empty, or an earlier build (it holds build.json); replaced only when the build succeeds' })
    .option('layout', { type: 'string', describe: 'Partition layout: a JSON file or a name in layouts/ (default: the image\'s own)' })
    .option('format', { choices: diskFormats, default: 'raw' as DiskFormat, describe: 'Disk image format; qcow2 also keeps disk.img' })
    .option('trusted-key', { type: 'string', array: true, describe: 'Public key (PEM) the image\'s agent trusts for bundles and channels; repeatable' })
    .option('update-server', { type: 'string', describe: 'Base URL of the image server (channels/ and bundles/ under it) the image\'s agent reads' })
    .option('channel', { type: 'string', describe: 'Channel name the image\'s agent follows, e.g. stable (an index URL also works and sets the server)' })
    .option('updates', { choices: ['channel', 'cluster'] as const, describe: 'channel: the host\'s daemon upgrades on its own; cluster: only the Kubernetes operator starts upgrades' })
    .option('image-version', { type: 'string', describe: 'Override the image version (e.g. 2.0.0) for this build' })
    .example('$0 build images/minimal --out out/minimal', 'Build the default image')
    .example('$0 build minimal --update-server https://updates.example/kubeos/ --channel stable --updates cluster', 'A cluster node: upgraded only by the operator, from its own image server')
    .example('SOURCE_DATE_EPOCH=1700000000 $0 build minimal --layout small --json', 'A reproducible build with a small layout, result as JSON')
    .epilogue('Writes disk.img, rootfs.img (the payload of update bundles) and build.json. Set SOURCE_DATE_EPOCH for byte-identical rebuilds.') as any,
  handler: async (args) => {
    const sourceDateEpoch = parseSourceDateEpoch(process.env['SOURCE_DATE_EPOCH']);
    const result = await buildImage({
      image: args.image, out: args.out, layout: args.layout, format: args.format, version: args.imageVersion, trustedKeys: args.trustedKey, channel: args.channel, updateServer: args.updateServer, updates: args.updates, sourceDateEpoch,
      onProgress: makeProgress(args),
    });
    printResult(args, result, () => [
      `built ${result.image.name} ${result.image.version} (kernel ${result.image.kernelVersion}) in ${result.seconds.toFixed(1)}s → ${result.out}`,
      ...result.disk.partitions.map((p) => `  ${p.number} ${p.name.padEnd(8)} ${formatSize(p.size).padStart(7)} ${p.filesystem.padEnd(5)} ${p.uuid}`),
      ...Object.entries(result.artifacts).map(([name, a]) => `  ${name.padEnd(11)} ${formatSize(a.size).padStart(9)} sha256:${a.sha256}`),
    ].join('\n'));
  },
};
