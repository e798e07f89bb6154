/** Maintenance windows in UTC. A window that ends at or before its start runs past midnight. */
import { weekdays, type MaintenanceWindow } from '../fleet/osupgrade.js';

const dayMs = 24 * 60 * 60 * 1000;

function minutes(hhmm: string): number {
  const [h, m] = hhmm.split(':');
  return Number(h) * 60 + Number(m);
}

function opensOn(window: MaintenanceWindow, day: number): boolean {
  const name = weekdays[((day % 7) + 7) % 7];
  return name !== undefined && window.days.includes(name);
}

export function isWithinWindow(window: MaintenanceWindow, now: number): boolean {
  const date = new Date(now);
  const day = date.getUTCDay();
  const minute = date.getUTCHours() * 60 + date.getUTCMinutes();
  const start = minutes(window.start);
  const end = minutes(window.end);
  if (start < end) return opensOn(window, day) && minute >= start && minute < end;
  // past midnight (or a whole day when start == end): today's window from start, yesterday's until end
  return (opensOn(window, day) && minute >= start) || (opensOn(window, day - 1) && minute < end);
}

/** True when no windows are set, or when now falls in one of them. */
export function isWithinAnyWindow(windows: readonly MaintenanceWindow[], now: number): boolean {
  return windows.length === 0 || windows.some((w) => isWithinWindow(w, now));
}

/** The next time (ms, minute resolution, within 8 days) a window opens; undefined if none ever does. */
export function nextWindowOpening(windows: readonly MaintenanceWindow[], now: number): number | undefined {
  if (isWithinAnyWindow(windows, now)) return now;
  const startOfMinute = now - (now % 60_000);
  for (const w of windows) if (w.days.length === 0) return undefined;
  let best: number | undefined;
  for (const w of windows) {
    const start = minutes(w.start);
    const midnight = now - (now % dayMs);
    for (let d = 0; d <= 7; d++) {
      const at = midnight + d * dayMs + start * 60_000;
      if (at > startOfMinute && opensOn(w, new Date(at).getUTCDay()) && (best === undefined || at < best)) best = at;
    }
  }
  return best;
}
