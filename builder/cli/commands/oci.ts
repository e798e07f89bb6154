/** `kubeos oci build`: the container image deploy/ runs, as an OCI layout (and archive), without a container engine. */
import type { Argv, CommandModule } from 'yargs';
import { parseSourceDateEpoch } from '../../bundle/resolve-metadata.js';
import { buildOciImage, projectVersion } from '../../oci/build-oci-image.js';
import { projectRoot } from '../../project-root.js';
import { makeProgress, printResult, type GlobalArgs } from '../../../runtime/cli/output.js';

interface OciBuildArgs extends GlobalArgs {
  out: string;
  tag?: string;
  archive?: string;
}

const build: CommandModule<GlobalArgs, OciBuildArgs> = {
  command: 'build',
  describe: 'Build the kubeos container image (Node.js and the bundled CLI) as an OCI image layout; prints its digest',
  builder: (y: Argv<GlobalArgs>) =>
    y
      .option('out', { type: 'string', demandOption: true, description: 'directory for the OCI image layout (replaced if it is one)' })
      .option('tag', { type: 'string', description: 'tag in the layout (default: the version in package.json, which deploy/ pins)' })
      .option('archive', { type: 'string', description: 'also write the layout as one tar, for skopeo copy oci-archive:FILE docker://REGISTRY/...' })
      .example('kubeos oci build --out out/oci --archive out/kubeos-oci.tar', 'build the image deploy/ names')
      .example('skopeo copy oci:out/oci:0.1.0 docker://ghcr.io/kubeos/kubeos:0.1.0', 'push it')
      .epilogue('Reproducible: the same sources, Node.js and SOURCE_DATE_EPOCH (default 0) give the same digest.') as Argv<OciBuildArgs>,
  handler: async (args) => {
    const progress = makeProgress(args);
    const tag = args.tag ?? (await projectVersion(projectRoot()));
    const result = await buildOciImage({
      out: args.out,
      tag,
      archive: args.archive,
      epoch: parseSourceDateEpoch(process.env['SOURCE_DATE_EPOCH']) ?? 0,
      onProgress: (step) => progress(step),
    });
    progress('done');
    printResult(args, result, () => [
      `${result.reference} in ${result.out}${result.archive ? ` (archive ${result.archive})` : ''}`,
      `  digest ${result.digest}`,
      `  layer  ${result.layers[0]!.digest} (${(result.layers[0]!.size / 1024 / 1024).toFixed(1)} MiB)`,
    ].join('\n'));
  },
};

export const ociCommand: CommandModule<GlobalArgs, GlobalArgs> = {
  command: 'oci <command>',
  describe: 'The container image the Kubernetes manifests in deploy/ run',
  builder: (y) => y.command(build).demandCommand(1, 'name a subcommand: kubeos oci build --out DIR'),
  handler: () => {},
};
