/**
 * Child of the "as nobody" test: stages an OCI archive and writes it into ext4 with this process's
 * (unprivileged) rights.   node --import=tsx build-ext4-child.ts OCI_TAR WORK_DIR IMAGE
 */
import { join } from 'node:path';
import { makeExt4 } from '../../builder/disk/make-ext4.js';
import { normalizeTimes } from '../../builder/rootfs/stage-rootfs.js';
import { applyTimes, stageSource } from '../../builder/source/stage-source.js';

const [oci, work, image] = process.argv.slice(2);
if (!oci || !work || !image) throw new Error('usage: build-ext4-child.ts OCI_TAR WORK_DIR IMAGE');
const epoch = 1_700_000_000;
const root = join(work, 'root');
const tree = await stageSource({ type: 'oci', path: oci, ref: undefined }, root, { work: join(work, 'tmp') });
const treeBytes = await normalizeTimes(root, epoch);
await applyTimes(tree);
await makeExt4({ file: image, size: 16 * 1024 * 1024, label: 't', uuid: '6a1a8e0e-0000-4000-8000-000000000002', journal: false, tree: root, treeBytes, epoch, meta: tree.meta });
process.stdout.write(`uid ${process.getuid?.()} wrote ${image}\n`);
