/**
 * Canonical JSON: object keys sorted, no whitespace. Signed documents are serialised with it so
 * that a signer and a verifier in another process (or language) agree on the exact bytes.
 */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(sortKeys(value));
}

function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      const v = (value as Record<string, unknown>)[key];
      if (v !== undefined) out[key] = sortKeys(v);
    }
    return out;
  }
  if (typeof value === 'number' && !Number.isSafeInteger(value)) {
    // Floats print differently across runtimes; signed documents hold integers only.
    throw new TypeError(`canonical JSON holds safe integers only, got ${value}`);
  }
  return value;
}
