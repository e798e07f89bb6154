/** `rootfs` in image definitions: each source type loads, and every problem is reported at once with its path. */
import test from 'ava';
import { validateImage } from '../../builder/image/load-image.js';
import type { KubeosError } from '../../runtime/core/errors.js';

const base = { name: 'x', version: '1.0.0', compatible: 'x', kernel: { package: 'linux-image-cloud-amd64' } };
const load = (rootfs: unknown) => validateImage({ ...base, rootfs }, 'image.json', '/images/x');

const valid: [string, unknown, unknown][] = [
  ['a directory', { type: 'dir', path: 'root' }, { type: 'dir', path: '/images/x/root' }],
  ['a tar archive', { type: 'tar', path: '../root.tar.zst' }, { type: 'tar', path: '/images/root.tar.zst' }],
  ['an OCI image layout with a ref', { type: 'oci', path: 'app.oci.tar', ref: 'app:1' }, { type: 'oci', path: '/images/x/app.oci.tar', ref: 'app:1' }],
  ['a docker save archive', { type: 'docker-archive', path: '/abs/app.tar' }, { type: 'docker-archive', path: '/abs/app.tar', ref: undefined }],
  ['a Debian root from mmdebstrap', { type: 'mmdebstrap', suite: 'bookworm', packages: ['systemd'] }, { type: 'mmdebstrap', suite: 'bookworm', packages: ['systemd'], mirror: undefined, variant: 'minbase' }],
];
for (const [title, rootfs, expected] of valid) {
  test(`rootfs may be ${title}`, (t) => {
    t.deepEqual(load(rootfs).rootfs, expected);
  });
}

test('without rootfs the image keeps busybox as its userland', (t) => {
  t.is(validateImage(base, 'image.json', '/images/x').rootfs, undefined);
});

test('a bad rootfs reports every problem with its path', (t) => {
  const error = t.throws(() => load({ type: 'mmdebstrap', suite: 'Bookworm!', packages: ['ok', 'Not A Package'], mirror: 'ftp://x', variant: 'tiny', path: 'x' })) as KubeosError;
  t.is(error.code, 'E_IMAGE_INVALID');
  t.deepEqual((error.details?.['problems'] as { path: string }[]).map((p) => p.path).sort(), ['rootfs.mirror', 'rootfs.packages', 'rootfs.path', 'rootfs.suite', 'rootfs.variant']);
});

test('an unknown rootfs type or a missing path is refused', (t) => {
  t.is((t.throws(() => load({ type: 'iso' })) as KubeosError).code, 'E_IMAGE_INVALID');
  const error = t.throws(() => load({ type: 'oci', ref: '' })) as KubeosError;
  t.deepEqual((error.details?.['problems'] as { path: string }[]).map((p) => p.path).sort(), ['rootfs.path', 'rootfs.ref']);
});

test('a misspelt field in an image definition gets "did you mean"', (t) => {
  const error = t.throws(() => validateImage({ ...base, kernal: {}, fils: 'rootfs' }, 'image.json', '/images/x')) as KubeosError;
  t.regex(error.message, /kernal: expected "kernel" \(did you mean it\?\), or one of the known fields/);
  t.regex(error.message, /fils: expected "files" \(did you mean it\?\)/);
});
