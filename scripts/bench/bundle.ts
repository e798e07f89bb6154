/**
 * Bundle speed and memory, against baselines run on the same files in the same run:
 *   - `kubeos bundle create` (hash chunks + zstd + tar + sign) vs plain `zstd` at the same settings;
 *   - `kubeos bundle verify` (signature, zstd -d, chunk and payload hashes) vs `sha256sum` of the bundle;
 *   - peak RSS of the node process doing each, on a 1 GiB image vs a 64 MiB one (flat = ratio ~1).
 * Images mix incompressible, binary and zero blocks, like a filesystem image with free space.
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { zstdCompressArgs } from '../../builder/bundle/create-bundle.js';
import { generateKeyPair } from '../../runtime/core/crypto/keys.js';
import { run } from '../../runtime/core/exec.js';
import { loadBinarySample, MiB, row, runChild, timeIt, writeImage, type Bench, type BenchRow } from './measure.js';

const child = fileURLToPath(new URL('./bundle-child.js', import.meta.url));

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-bundle-'));
  try {
    const keys = generateKeyPair();
    const key = join(dir, 'signing.pem');
    const pub = join(dir, 'signing.pub.pem');
    await writeFile(key, keys.privatePem, { mode: 0o600 });
    await writeFile(pub, keys.publicPem);
    const sample = await loadBinarySample();

    const rows: BenchRow[] = [];
    const rss: Record<string, { create: number; verify: number }> = {};
    for (const [label, size] of [['64 MiB', 64 * MiB], ['1 GiB', 1024 * MiB]] as const) {
      const image = join(dir, `rootfs-${size}.img`);
      const bundle = join(dir, `bundle-${size}.kubeos`);
      await writeImage(image, size, sample);

      const zstd = await timeIt(() => run('zstd', [...zstdCompressArgs(size).filter((a) => a !== '-c' && !a.startsWith('--stream-size')), '-f', image, '-o', join(dir, 'plain.zst')]));
      const create = await runChild(child, ['create', image, bundle, key]);
      const bundleSize = (await stat(bundle)).size;
      rows.push(row(`bundle create ${label}`, `zstd -${zstdCompressArgs(0)[0]?.slice(1)} -T0 of the same image`, create.seconds, zstd.seconds, 's', `bundle ${(bundleSize / MiB).toFixed(0)} MiB`));

      const sha = await timeIt(() => run('sha256sum', [bundle]));
      const verify = await runChild(child, ['verify', bundle, pub]);
      rows.push(row(`bundle verify ${label}`, 'sha256sum of the same bundle', verify.seconds, sha.seconds, 's'));
      rss[label] = { create: create.maxRssMiB, verify: verify.maxRssMiB };
      await rm(image, { force: true });
      await rm(bundle, { force: true });
    }
    const small = rss['64 MiB'];
    const large = rss['1 GiB'];
    if (small && large) {
      rows.push(row('peak RSS bundle create 1 GiB', 'same on 64 MiB', large.create, small.create, 'MiB', 'node process; ~1 = flat'));
      rows.push(row('peak RSS bundle verify 1 GiB', 'same on 64 MiB', large.verify, small.verify, 'MiB', 'node process; ~1 = flat'));
    }
    return rows;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
};
