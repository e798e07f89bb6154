/**
 * JSON → Layout. Collects every problem (with its JSON path) before failing, so one run of the
 * builder tells the user everything that is wrong with their layout.
 */
import { checkKnownKeys, isObject, Problems } from '../config/problems.js';
import { filesystemsByRole, roles, type Filesystem, type Layout, type PartitionSpec, type Role } from './layout.js';
import { guidPattern, partitionTypes } from './partition-types.js';
import { MiB, parseSize } from './size.js';

export const layoutKeys = ['$schema', 'name', 'description', 'seed', 'alignment', 'bootTries', 'diskSize', 'partitions'];
export const partitionKeys = ['name', 'role', 'type', 'size', 'filesystem'];
const defaultTypes: Record<Role, string> = { 'esp': 'esp', 'root-a': 'root-x86-64', 'root-b': 'root-x86-64', 'persist': 'linux-generic' };
const hint = 'see layouts/kubeos.json for a complete example';

export function validateLayout(data: unknown, file: string): Layout {
  const problems = new Problems();
  const bad = (path: string, expected: string, actual: unknown) => problems.add(path, expected, actual, 'E_LAYOUT_INVALID');
  if (!isObject(data)) {
    bad('(top level)', 'an object', data);
    problems.throwIfAny('layout', file, 'E_LAYOUT_INVALID', hint);
  }
  const obj = data as Record<string, unknown>;
  checkKnownKeys(problems, '', obj, layoutKeys, 'E_LAYOUT_INVALID');

  const name = obj['name'];
  if (typeof name !== 'string' || !/^[a-z0-9][a-z0-9-]*$/.test(name)) bad('name', 'a lower-case name like "kubeos"', name);
  const seed = obj['seed'] ?? name;
  if (typeof seed !== 'string' || seed.length === 0) bad('seed', 'a non-empty string', seed);
  const alignment = obj['alignment'] === undefined ? MiB : parseSize(obj['alignment']);
  if (alignment === undefined || alignment % 512 !== 0) bad('alignment', 'a size that is a multiple of 512 bytes, like "1MiB"', obj['alignment']);
  const bootTries = obj['bootTries'] ?? 3;
  if (typeof bootTries !== 'number' || !Number.isInteger(bootTries) || bootTries < 1 || bootTries > 9) bad('bootTries', 'an integer from 1 to 9', bootTries);
  const diskSize = obj['diskSize'] === undefined ? undefined : parseSize(obj['diskSize']);
  if (obj['diskSize'] !== undefined && diskSize === undefined) bad('diskSize', 'a size like "2GiB"', obj['diskSize']);

  const partitions: PartitionSpec[] = [];
  const rawPartitions = obj['partitions'];
  if (!Array.isArray(rawPartitions)) {
    bad('partitions', 'an array of partitions', rawPartitions);
  } else {
    rawPartitions.forEach((raw: unknown, index) => {
      const at = `partitions[${index}]`;
      if (!isObject(raw)) return bad(at, 'an object', raw);
      checkKnownKeys(problems, at, raw, partitionKeys, 'E_LAYOUT_INVALID');
      const role = raw['role'];
      const roleOk = typeof role === 'string' && (roles as readonly string[]).includes(role);
      if (!roleOk) bad(`${at}.role`, `one of ${roles.join(', ')}`, role);
      const pname = raw['name'] ?? role;
      if (typeof pname !== 'string' || !/^[A-Za-z0-9_-]{1,36}$/.test(pname)) bad(`${at}.name`, 'a GPT partition name of 1-36 letters, digits, "-" or "_"', pname);
      const type = resolveType(raw['type'] ?? (roleOk ? defaultTypes[role as Role] : undefined));
      if (type === undefined) bad(`${at}.type`, `a GUID or one of ${Object.keys(partitionTypes).join(', ')}`, raw['type']);
      const size = parseSize(raw['size']);
      if (size === undefined) bad(`${at}.size`, 'a size like "256MiB"', raw['size']);
      else if (alignment !== undefined && size % alignment !== 0) bad(`${at}.size`, `a multiple of the alignment (${alignment} bytes)`, raw['size']);
      const fs = raw['filesystem'];
      const allowed: readonly string[] = roleOk ? filesystemsByRole[role as Role] : [];
      if (typeof fs !== 'string' || (roleOk && !allowed.includes(fs))) {
        problems.add(`${at}.filesystem`, roleOk ? `one of ${allowed.join(', ')} for role ${role as string}` : 'a filesystem type', fs, roleOk ? 'E_FS_UNKNOWN' : 'E_LAYOUT_INVALID');
      }
      if (roleOk && typeof pname === 'string' && type !== undefined && size !== undefined && typeof fs === 'string') {
        partitions.push({ name: pname, role: role as Role, type, size, filesystem: fs as Filesystem });
      }
    });
    for (const role of roles) {
      const count = rawPartitions.filter((p: unknown) => isObject(p) && p['role'] === role).length;
      if (count !== 1) bad('partitions', `exactly one partition with role ${role}`, `${count}`);
    }
    const names = partitions.map((p) => p.name);
    for (const dup of new Set(names.filter((n, i) => names.indexOf(n) !== i))) bad('partitions', 'unique partition names', dup);
    const a = partitions.find((p) => p.role === 'root-a');
    const b = partitions.find((p) => p.role === 'root-b');
    if (a && b && (a.size !== b.size || a.filesystem !== b.filesystem)) {
      bad('partitions', 'root-a and root-b with the same size and filesystem', `${a.size}/${a.filesystem} vs ${b.size}/${b.filesystem}`);
    }
  }

  problems.throwIfAny('layout', file, 'E_LAYOUT_INVALID', hint);
  return { name: name as string, file, seed: seed as string, alignment: alignment as number, bootTries: bootTries as number, diskSize, partitions };
}

function resolveType(chosen: unknown): string | undefined {
  if (typeof chosen !== 'string') return undefined;
  if (guidPattern.test(chosen)) return chosen.toUpperCase();
  return (partitionTypes as Record<string, string>)[chosen];
}
