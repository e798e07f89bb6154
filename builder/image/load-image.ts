/** Reads and validates an image definition: a directory holding image.json, or the file itself. */
import { stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve } from 'node:path';
import { checkKnownKeys, isObject, Problems } from '../config/problems.js';
import { readJsonFile } from '../config/read-json-file.js';
import { parseUpdateSource } from '../../runtime/core/channel/layout.js';
import { versionPattern } from '../../runtime/core/compare-versions.js';
import { isKubeosError } from '../../runtime/core/errors.js';
import { parseOSConfig, type ConfigProblem, type OSConfig } from '../../runtime/core/os-config.js';
import { projectRoot } from '../project-root.js';
import { rootfsSourceTypes, type RootfsSource } from '../source/rootfs-source.js';
import type { ImageDefinition } from './image-definition.js';

export const rootfsKeys: Record<RootfsSource['type'], string[]> = {
  'dir': ['type', 'path'],
  'tar': ['type', 'path'],
  'oci': ['type', 'path', 'ref'],
  'docker-archive': ['type', 'path', 'ref'],
  'mmdebstrap': ['type', 'suite', 'packages', 'mirror', 'variant'],
};
const variants = ['extract', 'custom', 'essential', 'apt', 'required', 'minbase', 'buildd', 'important', 'debootstrap', 'standard'];

/** `rootfs`: one source; relative paths are the definition's. Problems go to `bad`. */
export /** The same rules hosts apply (parseUpdateSource), as a yes/no for the problem list. */
function isUpdateSource(channel: string | undefined, updateServer: string | undefined): boolean {
  try {
    parseUpdateSource('image.json', channel, updateServer);
    return true;
  } catch {
    return false;
  }
}

function validateRootfs(raw: unknown, dir: string, problems: Problems): RootfsSource | undefined {
  const bad = (path: string, expected: string, actual: unknown) => problems.add(path, expected, actual, 'E_IMAGE_INVALID');
  if (raw === undefined) return undefined;
  if (!isObject(raw)) {
    bad('rootfs', `an object with a type (${rootfsSourceTypes.join(', ')})`, raw);
    return undefined;
  }
  const type = raw['type'];
  if (typeof type !== 'string' || !(rootfsSourceTypes as readonly string[]).includes(type)) {
    bad('rootfs.type', `one of ${rootfsSourceTypes.join(', ')}`, type);
    return undefined;
  }
  const t = type as RootfsSource['type'];
  checkKnownKeys(problems, 'rootfs', raw, rootfsKeys[t], 'E_IMAGE_INVALID');
  if (t === 'mmdebstrap') {
    const suite = raw['suite'];
    if (typeof suite !== 'string' || !/^[a-z][a-z0-9-]*$/.test(suite)) bad('rootfs.suite', 'a Debian suite like "bookworm"', suite);
    const packages = raw['packages'] ?? [];
    if (!Array.isArray(packages) || !packages.every((p) => typeof p === 'string' && /^[a-z0-9][a-z0-9+.-]+$/.test(p))) bad('rootfs.packages', 'an array of Debian package names', packages);
    const mirror = raw['mirror'];
    if (mirror !== undefined && (typeof mirror !== 'string' || !/^(https?|file):\/\//.test(mirror))) bad('rootfs.mirror', 'an http(s) or file URL of a Debian mirror', mirror);
    const variant = raw['variant'] ?? 'minbase';
    if (typeof variant !== 'string' || !variants.includes(variant)) bad('rootfs.variant', `one of mmdebstrap's variants (${variants.join(', ')})`, variant);
    return { type: t, suite: suite as string, packages: Array.isArray(packages) ? (packages as string[]) : [], mirror: mirror as string | undefined, variant: variant as string };
  }
  const path = raw['path'];
  if (typeof path !== 'string' || path === '') bad('rootfs.path', `a path to the ${t === 'dir' ? 'directory' : t === 'oci' ? 'OCI image layout (directory or tar)' : 'archive'}, relative to the definition`, path);
  const where = resolve(dir, typeof path === 'string' ? path : '');
  if (t === 'oci' || t === 'docker-archive') {
    const ref = raw['ref'];
    if (ref !== undefined && (typeof ref !== 'string' || ref === '')) bad('rootfs.ref', 'the name or tag of one image in the archive', ref);
    return { type: t, path: where, ref: ref as string | undefined };
  }
  return { type: t, path: where };
}

export const imageKeys = ['$schema', 'name', 'description', 'version', 'compatible', 'arch', 'layout', 'kernel', 'rootfs', 'files', 'agent', 'config'];
export const agentKeys = ['channel', 'updateServer', 'updates', 'trustedKeys', 'pollSeconds'];
export const kernelKeys = ['package', 'modules', 'cmdline'];
const hint = 'see images/minimal/image.json for a complete example';

export async function loadImage(dirOrFile: string): Promise<ImageDefinition> {
  const fromRoot = join(projectRoot(), 'images', dirOrFile);
  let path = resolve(dirOrFile);
  try {
    if ((await stat(path)).isDirectory()) path = join(path, 'image.json');
  } catch {
    if (!dirOrFile.includes('/')) path = join(fromRoot, 'image.json');
  }
  const shown = relative(process.cwd(), path) || basename(path);
  const data = await readJsonFile(path, 'image definition', shown, 'E_IMAGE_INVALID', 'give a directory holding image.json (e.g. images/minimal) or the name of one in images/');
  return validateImage(data, shown, dirname(path));
}

export function validateImage(data: unknown, file: string, dir: string): ImageDefinition {
  const problems = new Problems();
  const bad = (path: string, expected: string, actual: unknown) => problems.add(path, expected, actual, 'E_IMAGE_INVALID');
  if (!isObject(data)) {
    bad('(top level)', 'an object', data);
    problems.throwIfAny('image definition', file, 'E_IMAGE_INVALID', hint);
  }
  const obj = data as Record<string, unknown>;
  checkKnownKeys(problems, '', obj, imageKeys, 'E_IMAGE_INVALID');
  const str = (key: string, pattern: RegExp, expected: string): string => {
    const value = obj[key];
    if (typeof value !== 'string' || !pattern.test(value)) bad(key, expected, value);
    return value as string;
  };
  const name = str('name', /^[a-z0-9][a-z0-9-]*$/, 'a lower-case name like "minimal"');
  const version = str('version', versionPattern, 'a semantic version like "1.0.0"');
  const compatible = str('compatible', /^[A-Za-z0-9._-]+$/, 'a compatibility string like "kubeos-minimal-x86_64"');
  const arch = obj['arch'] ?? 'x86_64';
  if (arch !== 'x86_64') bad('arch', '"x86_64" (the only architecture built so far)', arch);
  const layout = obj['layout'] ?? 'kubeos';
  if (typeof layout !== 'string' || layout.length === 0) bad('layout', 'a layout name or path', layout);
  const rawFiles = obj['files'];
  const fileList = typeof rawFiles === 'string' ? [rawFiles] : rawFiles ?? [];
  if (!Array.isArray(fileList) || !fileList.every((f) => typeof f === 'string' && f !== '' && !f.startsWith('/'))) {
    bad('files', 'a directory (or a list of them, applied in order) relative to the definition', rawFiles);
  }

  const kernel = obj['kernel'];
  let modules: string[] = [];
  if (!isObject(kernel)) {
    bad('kernel', 'an object with package, modules and cmdline', kernel);
  } else {
    checkKnownKeys(problems, 'kernel', kernel, kernelKeys, 'E_IMAGE_INVALID');
    if (typeof kernel['package'] !== 'string' || !/^linux-image-[a-z0-9.+-]+$/.test(kernel['package'])) {
      bad('kernel.package', 'a Debian kernel package like "linux-image-cloud-amd64"', kernel['package']);
    }
    const rawModules = kernel['modules'] ?? [];
    if (!Array.isArray(rawModules) || !rawModules.every((m) => typeof m === 'string' && /^[A-Za-z0-9_-]+$/.test(m))) {
      bad('kernel.modules', 'an array of module names like ["virtio_blk"]', rawModules);
    } else {
      modules = rawModules as string[];
    }
    const cmdline = kernel['cmdline'] ?? '';
    if (typeof cmdline !== 'string' || /kubeos\.(slot|boot)=|[\n"'\\]/.test(cmdline)) {
      bad('kernel.cmdline', 'extra kernel arguments without quotes, newlines or kubeos.slot/kubeos.boot (kubeos sets those)', cmdline);
    }
  }
  const rootfs = validateRootfs(obj['rootfs'], dir, problems);
  const rawAgent = obj['agent'];
  let agent: ImageDefinition['agent'];
  if (rawAgent !== undefined && rawAgent !== false) {
    const a = isObject(rawAgent) ? rawAgent : {};
    if (rawAgent !== true && !isObject(rawAgent)) bad('agent', 'true, false or an object with channel, trustedKeys, pollSeconds', rawAgent);
    checkKnownKeys(problems, 'agent', a, agentKeys, 'E_IMAGE_INVALID');
    const channel = a['channel'];
    const updateServer = a['updateServer'];
    if (channel !== undefined && (typeof channel !== 'string' || !isUpdateSource(channel, undefined))) bad('agent.channel', 'a channel name such as "stable" (or the URL of a channels/NAME.json index)', channel);
    if (updateServer !== undefined && (typeof updateServer !== 'string' || !isUpdateSource(undefined, updateServer))) bad('agent.updateServer', 'the http(s) base URL of the image server', updateServer);
    const updates = a['updates'] ?? 'channel';
    if (updates !== 'channel' && updates !== 'cluster') bad('agent.updates', '"channel" (the host follows its channel) or "cluster" (only the operator upgrades it)', updates);
    const keys = a['trustedKeys'] ?? [];
    if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) bad('agent.trustedKeys', 'an array of public key files relative to the definition', keys);
    const poll = a['pollSeconds'] ?? 300;
    if (typeof poll !== 'number' || poll < 1) bad('agent.pollSeconds', 'a number of seconds >= 1', poll);
    agent = {
      channel: channel as string | undefined,
      updateServer: updateServer as string | undefined,
      updates: updates as 'channel' | 'cluster',
      trustedKeys: Array.isArray(keys) ? (keys as string[]).map((k) => join(dir, k)) : [],
      pollSeconds: poll as number,
    };
  }
  let config: OSConfig | undefined;
  if (obj['config'] !== undefined) {
    try {
      config = parseOSConfig(obj['config'], `${file} config`);
    } catch (error) {
      if (!isKubeosError(error, 'E_CONFIG_INVALID')) throw error;
      for (const p of (error.details?.['problems'] ?? []) as ConfigProblem[]) bad(`config${p.path.slice(1)}`, p.expected, p.actual);
    }
  }
  problems.throwIfAny('image definition', file, 'E_IMAGE_INVALID', hint);
  const k = kernel as Record<string, unknown>;
  return {
    name,
    version,
    compatible,
    arch: 'x86_64',
    layout: layout as string,
    kernel: { package: k['package'] as string, modules, cmdline: (k['cmdline'] as string | undefined) ?? '' },
    agent,
    rootfs,
    files: Array.isArray(fileList) ? (fileList as string[]).map((f) => join(dir, f)) : [],
    config,
    dir,
    file,
  };
}
