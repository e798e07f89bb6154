/**
 * How many leading bytes of a bundle hold its header: the manifest and signature members and the
 * payload member's tar header, after which the compressed image starts. A host that installs by
 * delta needs only those, and asks the server for exactly them (a Range request) instead of
 * starting the whole download and stopping it.
 */
import { Readable } from 'node:stream';
import * as tar from 'tar-stream';
import { manifestMember, maxManifestBytes, maxSignatureBytes, payloadMember, signatureMember } from './manifest.js';

const block = 512;
const signatureGuess = 4096;
const padded = (size: number) => Math.ceil(size / block) * block;

/**
 * From a prefix of a bundle: `bytes`, the header's exact length, once the prefix reaches the
 * payload member's tar header; else `guess`, the length to read next (the manifest's size is known
 * from the first tar header; a signature is a few hundred bytes, so 4 KiB is allowed for it, and a
 * bigger one shows in its own tar header, read with that guess), or undefined when the prefix does
 * not start like a bundle (the full read then reports what is wrong).
 */
export async function measureBundleHeader(prefix: Buffer): Promise<{ bytes: number } | { guess: number } | undefined> {
  const extract = tar.extract();
  const sizes: { name: string; size: number }[] = [];
  const walked = new Promise<void>((resolve) => {
    extract.on('entry', (header, stream, next) => {
      sizes.push({ name: header.name, size: header.size ?? 0 });
      // an entry cut short by the prefix's end fails; that too is expected here
      stream.on('error', () => resolve());
      if (sizes.length === 3) {
        stream.destroy();
        resolve();
        return;
      }
      stream.on('end', next);
      stream.resume();
    });
    extract.on('finish', resolve);
    // a prefix ends inside the archive: that is expected here, not an error
    extract.on('error', () => resolve());
  });
  Readable.from([prefix]).pipe(extract);
  await walked;
  const [manifest, signature, payload] = sizes;
  if (manifest === undefined || manifest.name !== manifestMember || manifest.size > maxManifestBytes) return undefined;
  if (signature === undefined) return { guess: 3 * block + padded(manifest.size) + signatureGuess };
  if (signature.name !== signatureMember || signature.size > maxSignatureBytes || (payload !== undefined && payload.name !== payloadMember)) return undefined;
  const bytes = 3 * block + padded(manifest.size) + padded(signature.size);
  return payload === undefined ? { guess: bytes } : { bytes };
}

/**
 * The first read of a header: the whole header of an image up to about 1.7 GiB (its 4 MiB chunk
 * hashes take ~18 KB a GiB) in one request. A bigger one costs one more request for exactly the
 * rest, not more bytes; every byte past the header is downloaded for nothing (64 KiB here read 45 KB
 * past the header of a small update's 10.5 MiB delta).
 */
export const firstHeaderReadBytes = 32 << 10;

/**
 * A bundle's header read as a delta host reads it, through `read` (Range requests for the agent, a
 * file for `kubeos bundle diff`, which reports what a host would download): `firstHeaderReadBytes`
 * first, then the rest of a bigger manifest and a guess at the signature, then a bigger signature.
 * `read` gives at most `length` bytes from `offset`, fewer only at the end of the bundle. Gives the
 * bytes read and the header's exact length, or undefined when the prefix does not start like a
 * bundle.
 */
export async function readHeaderPrefix(read: (offset: number, length: number) => Promise<Buffer>): Promise<{ prefix: Buffer; headerBytes: number } | undefined> {
  let prefix = await read(0, firstHeaderReadBytes);
  let measured = await measureBundleHeader(prefix);
  let whole = prefix.length < firstHeaderReadBytes;
  // at most two more: the manifest's rest (and a guess at the signature), then a bigger signature
  for (let more = 0; more < 2 && !whole && measured !== undefined && 'guess' in measured && measured.guess > prefix.length; more++) {
    const asked = measured.guess - prefix.length;
    const got = await read(prefix.length, asked);
    whole = got.length < asked;
    prefix = Buffer.concat([prefix, got]);
    measured = await measureBundleHeader(prefix);
  }
  return measured === undefined || !('bytes' in measured) ? undefined : { prefix, headerBytes: measured.bytes };
}
