/**
 * Node OS configuration: one typed declaration per kind of setting, validated with every problem
 * listed at once (JSON path, expected, actual). Unknown kinds and fields are refused, never
 * ignored. Shared by the agent (`kubeos agent config apply`) and, later, image.json and the
 * cluster's OSConfig.
 *
 *   sysctl      kernel parameters: key → value, applied at once and kept across reboots
 *   files       whole files under /etc with their mode, written atomically
 *   limits      PAM limits entries (/etc/security/limits.d)
 *   kernelArgs  arguments added to / removed from the kernel command line (need a trial boot)
 */
import { KubeosError } from './errors.js';

export interface ConfigFile {
  /** Absolute, under /etc. */
  path: string;
  content: string;
  /** Permission bits, e.g. 0o644. */
  mode: number;
}

export const limitTypes = ['soft', 'hard', '-'] as const;
export const limitItems = ['core', 'data', 'fsize', 'memlock', 'nofile', 'rss', 'stack', 'cpu', 'nproc', 'as', 'maxlogins', 'maxsyslogins', 'priority', 'locks', 'sigpending', 'msgqueue', 'nice', 'rtprio'] as const;

export interface LimitEntry {
  domain: string;
  type: (typeof limitTypes)[number];
  item: (typeof limitItems)[number];
  value: string;
}

export interface OSConfig {
  sysctl: Record<string, string>;
  files: ConfigFile[];
  limits: LimitEntry[];
  kernelArgs: { add: string[]; remove: string[] };
}

export interface ConfigProblem {
  path: string;
  expected: string;
  actual: unknown;
}

export const configKinds = ['sysctl', 'files', 'limits', 'kernelArgs'] as const;
const maxFileBytes = 1024 * 1024;
/** Kernel arguments live in the GRUB environment block, whose first sector holds every variable. */
const maxKernelArgBytes = 96;
const sysctlKey = /^[a-z0-9_][a-z0-9_-]*(\.[a-zA-Z0-9_*:-]+)+$/;
const kernelArg = /^[A-Za-z0-9_][A-Za-z0-9_.,:=\/+@-]*$/;

function shown(value: unknown): unknown {
  if (typeof value === 'string' && value.length > 80) return `${value.slice(0, 77)}...`;
  return value;
}

/** Every problem of `value` as an OS configuration, or the configuration; `where` names the input in the error. */
export function parseOSConfig(value: unknown, where: string): OSConfig {
  const problems: ConfigProblem[] = [];
  const problem = (path: string, expected: string, actual: unknown) => problems.push({ path, expected, actual: shown(actual) });
  const config: OSConfig = { sysctl: {}, files: [], limits: [], kernelArgs: { add: [], remove: [] } };
  const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

  if (!isObject(value)) {
    problem('$', 'an object with sysctl, files, limits or kernelArgs', value);
  } else {
    for (const key of Object.keys(value)) {
      if (!(configKinds as readonly string[]).includes(key)) problem(`$.${key}`, `one of ${configKinds.join(', ')} (unknown kinds are refused, never ignored)`, key);
    }
    const sysctl = value['sysctl'];
    if (sysctl !== undefined) {
      if (!isObject(sysctl)) problem('$.sysctl', 'an object of key to value', sysctl);
      else {
        for (const [key, v] of Object.entries(sysctl)) {
          const path = `$.sysctl[${JSON.stringify(key)}]`;
          if (!sysctlKey.test(key) || key.includes('..')) problem(path, 'a sysctl key like net.ipv4.ip_forward', key);
          else if (typeof v === 'number' && Number.isFinite(v)) config.sysctl[key] = String(v);
          else if (typeof v === 'string' && v !== '' && !/[\n\r\0]/.test(v)) config.sysctl[key] = v;
          else problem(path, 'a number or a one-line string', v);
        }
      }
    }
    const files = value['files'];
    if (files !== undefined) {
      if (!Array.isArray(files)) problem('$.files', 'a list of { path, content, mode }', files);
      else {
        const seen = new Set<string>();
        files.forEach((f: unknown, i) => {
          const at = `$.files[${i}]`;
          if (!isObject(f)) return problem(at, 'an object { path, content, mode }', f);
          for (const key of Object.keys(f)) if (!['path', 'content', 'mode'].includes(key)) problem(`${at}.${key}`, 'path, content or mode', key);
          const path = f['path'];
          const ok = typeof path === 'string' && /^\/etc\/[^\0]+$/.test(path) && !path.split('/').some((s, j) => j > 0 && (s === '' || s === '.' || s === '..'));
          if (!ok) problem(`${at}.path`, 'an absolute path under /etc without "." or ".." parts', path);
          else if (path.startsWith('/etc/kubeos/')) problem(`${at}.path`, 'a path outside /etc/kubeos (the agent\'s own configuration)', path);
          else if (seen.has(path)) problem(`${at}.path`, 'each path once', path);
          else seen.add(path);
          const content = f['content'];
          if (typeof content !== 'string') problem(`${at}.content`, 'the file\'s text', content);
          else if (Buffer.byteLength(content) > maxFileBytes) problem(`${at}.content`, `at most ${maxFileBytes} bytes`, `${Buffer.byteLength(content)} bytes`);
          const mode = f['mode'] ?? '0644';
          const modeOk = typeof mode === 'string' && /^0?[0-7]{3}$/.test(mode);
          if (!modeOk) problem(`${at}.mode`, 'an octal mode string like "0644" (no setuid bits)', mode);
          if (ok && typeof content === 'string' && modeOk) config.files.push({ path, content, mode: Number.parseInt(mode, 8) });
        });
      }
    }
    const limits = value['limits'];
    if (limits !== undefined) {
      if (!Array.isArray(limits)) problem('$.limits', 'a list of { domain, type, item, value }', limits);
      else {
        limits.forEach((l: unknown, i) => {
          const at = `$.limits[${i}]`;
          if (!isObject(l)) return problem(at, 'an object { domain, type, item, value }', l);
          for (const key of Object.keys(l)) if (!['domain', 'type', 'item', 'value'].includes(key)) problem(`${at}.${key}`, 'domain, type, item or value', key);
          const { domain, type, item } = l;
          const v = l['value'];
          let good = true;
          if (typeof domain !== 'string' || !/^[A-Za-z0-9_@*%:.-]+$/.test(domain)) { problem(`${at}.domain`, 'a user, @group, * or a uid range', domain); good = false; }
          if (!(limitTypes as readonly unknown[]).includes(type)) { problem(`${at}.type`, limitTypes.join(', '), type); good = false; }
          if (!(limitItems as readonly unknown[]).includes(item)) { problem(`${at}.item`, `one of ${limitItems.join(', ')}`, item); good = false; }
          const value = typeof v === 'number' && Number.isInteger(v) ? String(v) : v;
          if (typeof value !== 'string' || !/^(-?\d+|unlimited|infinity)$/.test(value)) { problem(`${at}.value`, 'an integer, "unlimited" or "infinity"', v); good = false; }
          if (good) config.limits.push({ domain: domain as string, type: type as LimitEntry['type'], item: item as LimitEntry['item'], value: value as string });
        });
      }
    }
    const args = value['kernelArgs'];
    if (args !== undefined) {
      if (!isObject(args)) problem('$.kernelArgs', 'an object { add, remove }', args);
      else {
        for (const key of Object.keys(args)) if (key !== 'add' && key !== 'remove') problem(`$.kernelArgs.${key}`, 'add or remove', key);
        for (const key of ['add', 'remove'] as const) {
          const list = args[key];
          if (list === undefined) continue;
          if (!Array.isArray(list)) { problem(`$.kernelArgs.${key}`, 'a list of arguments', list); continue; }
          list.forEach((a: unknown, i) => {
            const at = `$.kernelArgs.${key}[${i}]`;
            if (typeof a !== 'string' || !kernelArg.test(a)) problem(at, 'one argument without spaces or quotes, like panic=10', a);
            else if (/^(kubeos\.|root=|rootfstype=|init=)/.test(a) && key === 'remove') problem(at, 'an argument kubeos does not need to boot', a);
            else if (/^(kubeos\.|root=|rootfstype=)/.test(a)) problem(at, 'an argument that is not kubeos\'s own (kubeos.*, root=, rootfstype=)', a);
            else config.kernelArgs[key].push(a);
          });
        }
        const bytes = config.kernelArgs.add.join(' ').length;
        if (bytes > maxKernelArgBytes) problem('$.kernelArgs.add', `at most ${maxKernelArgBytes} bytes in all (they live in the GRUB environment block)`, `${bytes} bytes`);
      }
    }
  }
  if (problems.length > 0) {
    throw new KubeosError('E_CONFIG_INVALID', `${where}: ${problems.length} problem(s): ${problems.map((p) => `${p.path}: expected ${p.expected}, got ${JSON.stringify(p.actual)}`).join('; ')}`, {
      hint: 'fix every listed field; docs/agent.md describes each kind of setting',
      details: { where, problems },
    });
  }
  config.files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return config;
}

/** A sysctl.d file for the configuration's sysctls, or undefined when it sets none. */
export function renderSysctl(config: OSConfig, header: string): string | undefined {
  const keys = Object.keys(config.sysctl).sort();
  if (keys.length === 0) return undefined;
  return `# ${header}\n${keys.map((k) => `${k} = ${config.sysctl[k]}`).join('\n')}\n`;
}

/** A limits.d file for the configuration's PAM limits, or undefined when it sets none. */
export function renderLimits(config: OSConfig, header: string): string | undefined {
  if (config.limits.length === 0) return undefined;
  return `# ${header}\n${config.limits.map((l) => `${l.domain} ${l.type} ${l.item} ${l.value}`).join('\n')}\n`;
}

/** The kernel command line with `args` applied: removed ones dropped (by exact word or NAME of NAME=...), added ones appended once. */
export function applyKernelArgs(cmdline: string, args: OSConfig['kernelArgs']): string {
  const removed = (word: string) => args.remove.some((r) => word === r || (!r.includes('=') && word.startsWith(`${r}=`)));
  const words = cmdline.split(/\s+/).filter((w) => w !== '' && !removed(w));
  for (const a of args.add) if (!words.includes(a)) words.push(a);
  return words.join(' ');
}

/** True when a change from `from` to `to` needs a reboot (only the kernel command line does). */
export function needsReboot(from: OSConfig, to: OSConfig): boolean {
  return JSON.stringify(from.kernelArgs) !== JSON.stringify(to.kernelArgs);
}

export const emptyOSConfig: OSConfig = { sysctl: {}, files: [], limits: [], kernelArgs: { add: [], remove: [] } };
