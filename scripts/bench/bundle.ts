/**
 * Bundle speed and memory, against floors run on the same files in the same run, each in a shell
 * of its own with no Node process in the data path (run-floor.ts), alternating, medians:
 *   - `kubeos bundle create` (hash chunks + zstd + tar + sign) vs `zstd -T0` at the same settings
 *     with a sha256 of the image beside it, and vs `rauc bundle` of the same image (run-rauc.ts);
 *   - `kubeos bundle verify` (signature, zstd -d, chunk and payload hashes) vs a sha256 of the
 *     bundle beside `tar -xO payload | zstd -d | sha256`.
 *   - both again against a **format floor**: the same tools doing every sha256 pass the bundle
 *     format asks for (create: the image three times, for its sha256, its 4 MiB chunks and its
 *     content-defined chunks, the payload as zstd writes it, then the bundle file; verify: the
 *     file, the payload, the image twice), so the ratio shows what kubeos adds over the format's
 *     own work, apart from what the format costs over the plain floor.
 * The floors hash with `openssl dgst -sha256`, not `sha256sum`: Debian's coreutils does not use
 * the CPU's SHA instructions and hashes about 3x slower here, which would flatter kubeos (its
 * hashes are OpenSSL's, through Node).
 *
 *   - peak RSS of the node process doing each, on a 1 GiB image vs a 64 MiB one (flat = ratio ~1).
 * Images mix incompressible, binary and zero blocks, like a filesystem image with free space.
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { zstdCompressFlags, zstdLevel } from '../../builder/bundle/create-bundle.js';
import { payloadMember } from '../../runtime/core/bundle/manifest.js';
import { generateKeyPair } from '../../runtime/core/crypto/keys.js';
import { loadBinarySample, median, MiB, row, runChild, runs, writeImage, type Bench, type BenchRow } from './measure.js';
import { runFloor } from './run-floor.js';
import { createRaucBundle, makeRaucSigner, missingRaucTools, raucBundleLabel } from './run-rauc.js';

const child = fileURLToPath(new URL('./bundle-child.js', import.meta.url));
const rounds = 3;

// kubeos's own zstd settings; the floor, like kubeos, has zstd read the image file
const floorZstdArgs = zstdCompressFlags;
const createFloorLabel = `floor: zstd ${floorZstdArgs.join(' ')} IMAGE -o OUT beside openssl dgst -sha256 IMAGE, in a shell`;
const verifyFloorLabel = 'floor: openssl dgst -sha256 BUNDLE beside tar -xOf BUNDLE payload | zstd -d | openssl dgst -sha256, in a shell';
const createFormatLabel = 'format floor: zstd -T0 IMAGE | tee OUT | openssl dgst, beside 3 x openssl dgst IMAGE; then openssl dgst OUT (the bundle file)';
const verifyFormatLabel = 'format floor: openssl dgst BUNDLE beside tar -xOf BUNDLE payload | tee >(openssl dgst) | zstd -d | tee >(openssl dgst) | openssl dgst';
/** Every sha256 pass of bundle create, by the tools alone. */
const createFormatScript = 'img=$1 out=$2\nshift 2\n{ zstd "$@" -c "$img" | tee "$out" | openssl dgst -sha256; } & z=$!\nfor i in 1 2 3; do openssl dgst -sha256 "$img" & done\nwait\nopenssl dgst -sha256 "$out"';
/** Every sha256 pass of bundle verify, by the tools alone. */
const verifyFormatScript = 'openssl dgst -sha256 "$1" & h=$!\ntar -xOf "$1" "$2" | tee >(openssl dgst -sha256 >/dev/null) | zstd -d -c -q | tee >(openssl dgst -sha256 >/dev/null) | openssl dgst -sha256\nwait';

export const bench: Bench = async () => {
  const dir = await mkdtemp(join(tmpdir(), 'kubeos-bench-bundle-'));
  try {
    const keys = generateKeyPair();
    const key = join(dir, 'signing.pem');
    const pub = join(dir, 'signing.pub.pem');
    await writeFile(key, keys.privatePem, { mode: 0o600 });
    await writeFile(pub, keys.publicPem);
    const raucMissing = await missingRaucTools();
    const signer = raucMissing.length === 0 ? await makeRaucSigner(dir) : undefined;
    const sample = await loadBinarySample();

    const rows: BenchRow[] = [];
    const rss: Record<string, { create: number; verify: number }> = {};
    for (const [label, size] of [['64 MiB', 64 * MiB], ['1 GiB', 1024 * MiB]] as const) {
      const image = join(dir, `rootfs-${size}.img`);
      const bundle = join(dir, `bundle-${size}.kubeos`);
      const raucBundle = join(dir, `bundle-${size}.raucb`);
      await writeImage(image, size, sample);

      // alternating runs, medians: on a shared 2-core machine single runs swing by a third.
      // Each round starts with a different one, so none always runs first.
      const create: Record<'floor' | 'format' | 'kubeos' | 'rauc', number[]> = { floor: [], format: [], kubeos: [], rauc: [] };
      let createRss = 0;
      const createSteps = {
        floor: async () => {
          create.floor.push(await runFloor('img=$1 out=$2\nshift 2\nzstd "$@" -f "$img" -o "$out" & z=$!\nopenssl dgst -sha256 "$img"\nwait "$z"', [image, join(dir, 'plain.zst'), ...floorZstdArgs]));
        },
        format: async () => {
          create.format.push(await runFloor(createFormatScript, [image, join(dir, 'plain.zst'), ...floorZstdArgs]));
        },
        kubeos: async () => {
          const made = await runChild(child, ['create', image, bundle, key]);
          create.kubeos.push(made.seconds);
          createRss = Math.max(createRss, made.maxRssMiB);
        },
        rauc: async () => {
          if (signer !== undefined) create.rauc.push(await createRaucBundle(image, raucBundle, join(dir, 'rauc-content'), signer));
        },
      };
      const order = ['floor', 'kubeos', 'format', 'rauc'] as const;
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < order.length; i++) await createSteps[order[(round + i) % order.length] ?? 'floor']();
      }
      const kubeosCreate = median(create.kubeos);
      const bundleSize = (await stat(bundle)).size;
      const zstdSize = (await stat(join(dir, 'plain.zst'))).size;
      rows.push(row(`bundle create ${label} (median of ${rounds})`, createFloorLabel, kubeosCreate, median(create.floor), 's',
        `bundle ${(bundleSize / MiB).toFixed(0)} MiB, zstd alone ${(zstdSize / MiB).toFixed(0)} MiB; runs ${runs(create.kubeos)} vs ${runs(create.floor)}`));
      rows.push(row(`bundle create ${label} vs its format floor (median of ${rounds})`, createFormatLabel, kubeosCreate, median(create.format), 's',
        `what kubeos adds over the hashing the format needs (format floor / plain floor: ${(median(create.format) / median(create.floor)).toFixed(2)}x); runs ${runs(create.format)}`));
      if (signer === undefined) {
        rows.push(row(`bundle create ${label} vs RAUC`, raucBundleLabel, kubeosCreate, Number.NaN, 's', `not run: missing ${raucMissing.join(', ')} (scripts/install-deps.sh)`));
      } else {
        const raucSize = (await stat(raucBundle)).size;
        rows.push(row(`bundle create ${label} vs RAUC (median of ${rounds})`, raucBundleLabel, kubeosCreate, median(create.rauc), 's',
          `RAUC bundle ${(raucSize / MiB).toFixed(0)} MiB (squashfs, 128 KiB blocks, zstd -${zstdLevel}); runs ${runs(create.kubeos)} vs ${runs(create.rauc)}`));
      }
      await rm(raucBundle, { force: true });
      await rm(join(dir, 'plain.zst'), { force: true });

      const verify: Record<'floor' | 'format' | 'kubeos', number[]> = { floor: [], format: [], kubeos: [] };
      let verifyRss = 0;
      for (let round = 0; round < rounds; round++) {
        const floor = () => runFloor('openssl dgst -sha256 "$1" & h=$!\ntar -xOf "$1" "$2" | zstd -d -c -q | openssl dgst -sha256\nwait "$h"', [bundle, payloadMember]);
        const kubeos = () => runChild(child, ['verify', bundle, pub]);
        const format = () => runFloor(verifyFormatScript, [bundle, payloadMember]);
        if (round % 2 === 1) verify.floor.push(await floor());
        if (round % 2 === 1) verify.format.push(await format());
        const checked = await kubeos();
        verify.kubeos.push(checked.seconds);
        verifyRss = Math.max(verifyRss, checked.maxRssMiB);
        if (round % 2 === 0) verify.floor.push(await floor());
        if (round % 2 === 0) verify.format.push(await format());
      }
      rows.push(row(`bundle verify ${label} (median of ${rounds})`, verifyFloorLabel, median(verify.kubeos), median(verify.floor), 's', `runs ${runs(verify.kubeos)} vs ${runs(verify.floor)}`));
      rows.push(row(`bundle verify ${label} vs its format floor (median of ${rounds})`, verifyFormatLabel, median(verify.kubeos), median(verify.format), 's',
        `format floor / plain floor: ${(median(verify.format) / median(verify.floor)).toFixed(2)}x; runs ${runs(verify.format)}`));
      rss[label] = { create: createRss, verify: verifyRss };
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
