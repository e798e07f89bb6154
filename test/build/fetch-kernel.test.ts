/** The kernel cache under concurrent builds (parallel tests and CI start with an empty cache). */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fetchKernel, resolvePackage } from '../../builder/kernel/fetch-kernel.js';
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

test.serial('a kernel meta package is resolved again only when apt\'s lists change', async (t) => {
  const dir = await makeTempDir(t, 'kubeos-kernel-resolve-');
  process.env['KUBEOS_CACHE_DIR'] = join(dir, 'cache');
  const lists = join(dir, 'lists-stamp');
  await writeFile(lists, 'v1');
  const resolved = await resolvePackage('linux-image-cloud-amd64', { stampPaths: [lists] });
  t.regex(resolved, /^linux-image-\d/);
  // what the cache says is answered while the stamp holds: apt-cache is not asked
  const file = join(dir, 'cache/kernels/resolved.json');
  await writeFile(file, (await readFile(file, 'utf8')).replace(resolved, 'linux-image-0.0-cached'));
  t.is(await resolvePackage('linux-image-cloud-amd64', { stampPaths: [lists] }), 'linux-image-0.0-cached');
  await writeFile(lists, 'v2, after apt-get update');
  t.is(await resolvePackage('linux-image-cloud-amd64', { stampPaths: [lists] }), resolved);
  await writeFile(file, '{ damaged');
  t.is(await resolvePackage('linux-image-cloud-amd64', { stampPaths: [lists] }), resolved);
});
