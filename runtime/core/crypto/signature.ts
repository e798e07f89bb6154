/**
 * Detached ed25519 signatures as `{ keyid, sig }` (sig in base64). The same shape signs bundle
 * manifests and channel indexes, so one verifier decides what "trusted" means.
 */
import { sign, verify, type KeyObject } from 'node:crypto';
import { KubeosError, type ErrorCode } from '../errors.js';
import { keyIdOf, type TrustedKeys } from './keys.js';

export interface Signature {
  keyid: string;
  sig: string;
}

export function signBytes(privateKey: KeyObject, bytes: Uint8Array): Signature {
  return { keyid: keyIdOf(privateKey), sig: sign(null, bytes, privateKey).toString('base64') };
}

/** Checks the shape of an untrusted signature object. */
export function parseSignature(value: unknown, what: string, code: ErrorCode): Signature {
  const v = value as Partial<Signature> | null;
  if (v === null || typeof v !== 'object' || typeof v.keyid !== 'string' || typeof v.sig !== 'string') {
    throw new KubeosError(code, `${what}: a signature must be { keyid: string, sig: string }`, { details: { value } });
  }
  return { keyid: v.keyid, sig: v.sig };
}

/**
 * Throws E_UNKNOWN_KEY when no trusted key has the signature's id and E_SIGNATURE when the
 * signature does not match; returns the key id that vouched for the bytes.
 */
export function verifySignature(bytes: Uint8Array, signature: Signature, trustedKeys: TrustedKeys, what: string): string {
  const key = trustedKeys.get(signature.keyid);
  if (key === undefined) {
    throw new KubeosError('E_UNKNOWN_KEY', `${what} is signed by key ${signature.keyid}, which is not trusted`, {
      hint: `pass the signer's public key (--pubkey); trusted: ${[...trustedKeys.keys()].join(', ') || 'none'}`,
      details: { keyid: signature.keyid, trusted: [...trustedKeys.keys()] },
    });
  }
  const sig = Buffer.from(signature.sig, 'base64');
  // Node throws on a wrongly sized ed25519 signature; a bad length is just a bad signature.
  const ok = sig.length === 64 && verify(null, bytes, key, sig);
  if (!ok) {
    throw new KubeosError('E_SIGNATURE', `${what}: signature by key ${signature.keyid} does not match`, {
      hint: 'the signed bytes or the signature were changed after signing',
      details: { keyid: signature.keyid },
    });
  }
  return signature.keyid;
}
