/** Writes a fresh ed25519 key pair into a directory; refuses to replace keys unless told to. */
import { chmod, mkdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { generateKeyPair } from '../../runtime/core/crypto/keys.js';
import { KubeosError } from '../../runtime/core/errors.js';

export const privateKeyFile = 'signing.pem';
export const publicKeyFile = 'signing.pub.pem';

export interface WrittenKeyPair {
  keyId: string;
  privateKey: string;
  publicKey: string;
}

export async function writeKeyPair(dir: string, options: { force?: boolean } = {}): Promise<WrittenKeyPair> {
  const pair = generateKeyPair();
  const privateKey = join(dir, privateKeyFile);
  const publicKey = join(dir, publicKeyFile);
  const flag = options.force ? 'w' : 'wx';
  const existing = await stat(dir).catch(() => undefined);
  if (existing !== undefined && !existing.isDirectory()) {
    throw new KubeosError('E_USAGE', `--out ${dir} is a file; keygen writes a directory holding ${privateKeyFile} and ${publicKeyFile}`, {
      hint: `name a directory, e.g. --out ${join(dirname(dir), 'keys')}`,
      details: { dir },
    });
  }
  try {
    await mkdir(dir, { recursive: true });
    await writeFile(privateKey, pair.privatePem, { mode: 0o600, flag });
    await chmod(privateKey, 0o600); // an existing file keeps its old mode with flag 'w'
    await writeFile(publicKey, pair.publicPem, { mode: 0o644, flag });
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new KubeosError('E_OUTPUT', `a key already exists in ${dir}`, { hint: 'pass --force to replace it (old signatures stop verifying with the new key)', details: { dir } });
    }
    throw new KubeosError('E_OUTPUT', `cannot write keys to ${dir}: ${(error as Error).message}`, { cause: error, details: { dir } });
  }
  return { keyId: pair.keyId, privateKey, publicKey };
}
