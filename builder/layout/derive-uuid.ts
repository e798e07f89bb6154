/** Stable UUIDs from a seed, so partition and filesystem ids are the same in every build. */
import { createHash } from 'node:crypto';

export function deriveUuid(seed: string, purpose: string): string {
  const bytes = createHash('sha256').update(`kubeos\0${seed}\0${purpose}`).digest().subarray(0, 16);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40; // version 4 layout: random-looking, never a real v1 MAC
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80; // RFC 4122 variant
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`.toUpperCase();
}

/** A 32-bit FAT volume id from the same seed, as 8 hex digits. */
export function deriveVolumeId(seed: string, purpose: string): string {
  return createHash('sha256').update(`kubeos\0${seed}\0${purpose}`).digest().subarray(0, 4).toString('hex').toUpperCase();
}
