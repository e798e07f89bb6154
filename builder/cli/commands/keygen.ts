/** `kubeos keygen --out DIR`: an ed25519 key pair for signing bundles and channel indexes. */
import type { CommandModule } from 'yargs';
import { writeKeyPair } from '../../bundle/write-key-pair.js';
import { printResult, type GlobalArgs } from '../../../runtime/cli/output.js';

interface KeygenArgs extends GlobalArgs {
  out: string;
  force?: boolean;
}

export const keygenCommand: CommandModule<GlobalArgs, KeygenArgs> = {
  command: 'keygen',
  describe: 'Make an ed25519 key pair: DIR/signing.pem (private, 0600) and DIR/signing.pub.pem',
  builder: (y) =>
    y
      .option('out', { type: 'string', demandOption: true, describe: 'Directory for the key files' })
      .option('force', { type: 'boolean', describe: 'Replace keys already in DIR' })
      .example('$0 keygen --out keys', 'keys/signing.pem signs bundles and channels; give keys/signing.pub.pem to kubeos build --trusted-key'),
  handler: async (args) => {
    const written = await writeKeyPair(args.out, { force: args.force });
    printResult(args, written, () => `key ${written.keyId}\n  private ${written.privateKey} (keep secret)\n  public  ${written.publicKey} (give to hosts and verifiers)`);
  },
};
