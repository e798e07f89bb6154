/** Sizes in layouts and image definitions: "64MiB", "1GiB", "512KiB" or a plain byte count. */
const units: Record<string, number> = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3, TiB: 1024 ** 4 };

export const MiB = 1024 ** 2;

/** Parses a size, or returns undefined when it is not one. */
export function parseSize(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value > 0 ? value : undefined;
  if (typeof value !== 'string') return undefined;
  const match = /^(\d+)\s*(B|KiB|MiB|GiB|TiB)?$/.exec(value.trim());
  if (!match) return undefined;
  const bytes = Number(match[1]) * (units[match[2] ?? 'B'] ?? 1);
  return Number.isSafeInteger(bytes) && bytes > 0 ? bytes : undefined;
}

export function formatSize(bytes: number): string {
  for (const unit of ['TiB', 'GiB', 'MiB', 'KiB'] as const) {
    const factor = units[unit] ?? 1;
    if (bytes >= factor && bytes % factor === 0) return `${bytes / factor}${unit}`;
  }
  if (bytes >= MiB) return `${(bytes / MiB).toFixed(1)}MiB`;
  return `${bytes}B`;
}
