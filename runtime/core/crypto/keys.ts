/**
 * ed25519 keys in PEM (PKCS#8 private, SPKI public). A key's id is the sha256 of its SPKI DER, so
 * anyone holding the public key derives the same id and an id can never name two keys.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, type KeyObject } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { KubeosError } from '../errors.js';

export interface KeyPairPem {
  keyId: string;
  privatePem: string;
  publicPem: string;
}

/** Trusted public keys by key id; what a verifier accepts signatures from. */
export type TrustedKeys = ReadonlyMap<string, KeyObject>;

export function generateKeyPair(): KeyPairPem {
  const { privateKey, publicKey } = generateKeyPairSync('ed25519');
  return {
    keyId: keyIdOf(publicKey),
    privatePem: privateKey.export({ type: 'pkcs8', format: 'pem' }).toString(),
    publicPem: publicKey.export({ type: 'spki', format: 'pem' }).toString(),
  };
}

export function keyIdOf(key: KeyObject): string {
  const publicKey = key.type === 'private' ? createPublicKey(key) : key;
  const der = publicKey.export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('hex');
}

function requireEd25519(key: KeyObject, source: string): KeyObject {
  if (key.asymmetricKeyType !== 'ed25519') {
    throw new KubeosError('E_KEY_INVALID', `${source}: expected an ed25519 key, got ${key.asymmetricKeyType ?? key.type}`, {
      hint: 'make a key pair with: kubeos keygen --out DIR',
    });
  }
  return key;
}

export function parsePrivateKey(pem: string, source = 'private key'): KeyObject {
  let key: KeyObject;
  try {
    key = createPrivateKey({ key: pem, format: 'pem' });
  } catch (cause) {
    throw new KubeosError('E_KEY_INVALID', `${source}: not a PEM private key`, { cause, hint: 'pass the signing.pem written by kubeos keygen' });
  }
  return requireEd25519(key, source);
}

/** Accepts a public key, or a private key whose public half is then used. */
export function parsePublicKey(pem: string, source = 'public key'): KeyObject {
  // createPublicKey takes a private key too (and derives its public half): a signing key named
  // where a trusted key belongs would then be copied into images and configs
  if (/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(pem)) {
    throw new KubeosError('E_KEY_INVALID', `${source}: is a private key, where a public key belongs`, { hint: 'pass the signing.pub.pem written by kubeos keygen beside it; keep signing.pem to the signer', details: { source } });
  }
  let key: KeyObject;
  try {
    key = createPublicKey({ key: pem, format: 'pem' });
  } catch (cause) {
    throw new KubeosError('E_KEY_INVALID', `${source}: not a PEM public key`, { cause, hint: 'pass the signing.pub.pem written by kubeos keygen' });
  }
  return requireEd25519(key, source);
}

async function readKeyFile(path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (cause) {
    throw new KubeosError('E_KEY_INVALID', `cannot read key file ${path}`, { cause, details: { path } });
  }
}

export async function loadPrivateKey(path: string): Promise<KeyObject> {
  return parsePrivateKey(await readKeyFile(path), path);
}

export async function loadPublicKey(path: string): Promise<KeyObject> {
  return parsePublicKey(await readKeyFile(path), path);
}

export function makeTrustedKeys(keys: Iterable<KeyObject>): TrustedKeys {
  const trusted = new Map<string, KeyObject>();
  for (const key of keys) {
    const publicKey = key.type === 'private' ? createPublicKey(key) : key;
    trusted.set(keyIdOf(publicKey), publicKey);
  }
  return trusted;
}

export async function loadTrustedKeys(paths: readonly string[]): Promise<TrustedKeys> {
  return makeTrustedKeys(await Promise.all(paths.map(loadPublicKey)));
}
