/** hashFile: the sha256 of a whole file across read boundaries, and a stop when asked. */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { hashFile } from '../../runtime/core/hash-file.js';
import { makeFileTempDir, removeFileTempDirs } from '../helpers/temp-dir.js';

const sizes = [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 12345];

for (const size of sizes) {
  test(`a file of ${size} bytes hashes as its bytes do`, async (t) => {
    const dir = await makeFileTempDir('kubeos-hash-');
    const data = randomBytes(size);
    await writeFile(join(dir, 'f'), data);
    t.is(await hashFile(join(dir, 'f')), createHash('sha256').update(data).digest('hex'));
  });
}

test('an aborted signal stops the hashing', async (t) => {
  const dir = await makeFileTempDir('kubeos-hash-');
  await writeFile(join(dir, 'f'), randomBytes(3 << 20));
  const controller = new AbortController();
  controller.abort(new Error('stopped'));
  await t.throwsAsync(hashFile(join(dir, 'f'), controller.signal), { message: 'stopped' });
});

test.after.always('remove the temporary directories', removeFileTempDirs);
