/**
 * GRUB's environment block: exactly 1024 bytes, a fixed header line, `key=value` lines, and '#'
 * padding. GRUB's `save_env` rewrites it in place, so the size must never change.
 */
import { KubeosError } from './errors.js';

export const grubEnvSize = 1024;
const header = '# GRUB Environment Block\n';

export type GrubEnv = Record<string, string>;

export function encodeGrubEnv(env: GrubEnv): Buffer {
  let body = header;
  for (const [key, value] of Object.entries(env)) {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(key)) throw new KubeosError('E_BOOTENV', `invalid GRUB environment variable name ${JSON.stringify(key)}`);
    if (/[\n\\]/.test(value)) throw new KubeosError('E_BOOTENV', `GRUB environment value of ${key} must not contain a newline or backslash`);
    body += `${key}=${value}\n`;
  }
  const bytes = Buffer.from(body, 'utf8');
  if (bytes.length > grubEnvSize) throw new KubeosError('E_BOOTENV', `GRUB environment needs ${bytes.length} bytes, more than the block's ${grubEnvSize}`);
  return Buffer.concat([bytes, Buffer.alloc(grubEnvSize - bytes.length, '#')]);
}

export function decodeGrubEnv(block: Buffer): GrubEnv {
  if (block.length !== grubEnvSize || !block.subarray(0, header.length).equals(Buffer.from(header))) {
    throw new KubeosError('E_BOOTENV', `not a GRUB environment block (size ${block.length}, expected ${grubEnvSize} bytes starting with "${header.trim()}")`);
  }
  const env: GrubEnv = {};
  for (const line of block.subarray(header.length).toString('utf8').split('\n')) {
    if (line.startsWith('#') || line === '') continue;
    const eq = line.indexOf('=');
    if (eq > 0) env[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return env;
}
