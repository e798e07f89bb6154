/** The kernel cache under concurrent builds (parallel tests and CI start with an empty cache). */
import { fetchKernel } from '../../builder/kernel/fetch-kernel.js';
import { resolveModules } from '../../builder/kernel/resolve-modules.js';
import { testNeeding } from '../helpers/tools.js';
import { makeTempDir } from '../helpers/temp-dir.js';

const test = await testNeeding(['apt-get', 'apt-cache', 'dpkg-deb', 'modinfo']);

test('three builds fetching the kernel into an empty cache at once all get a complete one', async (t) => {
  process.env['KUBEOS_CACHE_DIR'] = await makeTempDir(t, 'kubeos-kernel-cache-');
  const kernels = await Promise.all([1, 2, 3].map(() => fetchKernel('linux-image-cloud-amd64')));
  t.is(new Set(kernels.map((k) => k.modulesDir)).size, 1);
  // each one can still read its modules after the others finished
  for (const kernel of kernels) {
    const names = (await resolveModules(kernel.modulesDir, ['virtio_blk', 'virtio_pci'])).map((m) => m.name);
    t.true(names.includes('virtio_blk') && names.includes('virtio_pci'));
    // dependencies first: virtio_ring before virtio, both before the drivers
    t.true(names.indexOf('virtio_ring') < names.indexOf('virtio'));
    t.true(names.indexOf('virtio') < names.indexOf('virtio_blk'));
  }
});
