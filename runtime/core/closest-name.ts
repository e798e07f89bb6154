/** "Did you mean": the known name closest to a misspelt one (fastest-levenshtein), if it is close enough to be a typo. */
import { distance } from 'fastest-levenshtein';

export function closestName(name: string, known: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const candidate of known) {
    const d = distance(name, candidate);
    if (d < bestDistance) {
      best = candidate;
      bestDistance = d;
    }
  }
  return best !== undefined && bestDistance > 0 && bestDistance <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}
