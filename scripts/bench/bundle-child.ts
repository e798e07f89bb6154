/**
 * Child process of the bundle bench: runs one create or verify through the library and reports its
 * own wall time and peak RSS. Peak RSS is VmHWM from /proc/self/status: getrusage's maxRSS (what
 * `process.resourceUsage()` reports) inherits the PARENT's RSS at fork on Linux, so a child of a big
 * parent would report the parent's size.
 *   node bundle-child.js create ROOTFS OUT KEY | verify BUNDLE PUBKEY
 */
import { performance } from 'node:perf_hooks';
import { createBundle } from '../../builder/bundle/create-bundle.js';
import { loadPrivateKey, loadTrustedKeys } from '../../runtime/core/crypto/keys.js';
import { verifyBundleFile } from '../../runtime/core/bundle/verify-bundle-file.js';
import { peakRssMiB } from './measure.js';

const [mode, a, b, c] = process.argv.slice(2);
const start = performance.now();
if (mode === 'create' && a && b && c) {
  await createBundle({
    rootfs: a,
    out: b,
    privateKey: await loadPrivateKey(c),
    metadata: { os: 'kubeos', version: '1.0.0', arch: 'x86_64', compatible: 'bench', kernelVersion: '0' },
    sourceDateEpoch: 0,
  });
} else if (mode === 'verify' && a && b) {
  await verifyBundleFile(a, { trustedKeys: await loadTrustedKeys([b]) });
} else {
  process.stderr.write('usage: bundle-child.js create ROOTFS OUT KEY | verify BUNDLE PUBKEY\n');
  process.exit(2);
}
const seconds = (performance.now() - start) / 1000;
process.stdout.write(`${JSON.stringify({ seconds, maxRssMiB: await peakRssMiB() })}\n`);
