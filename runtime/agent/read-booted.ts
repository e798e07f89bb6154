/** Which slot this host booted and how: the initramfs records it under /run/kubeos from the kernel command line. */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Slot } from '../core/boot-env.js';
import { KubeosError } from '../core/errors.js';
import type { BootKind } from './plan-boot-env.js';

export interface Booted {
  slot: Slot;
  kind: BootKind;
  /** VERSION_ID of the running system. */
  version: string;
}

export async function readBooted(runDir: string, osRelease: string): Promise<Booted> {
  const read = (name: string) => readFile(join(runDir, name), 'utf8').then((t) => t.trim(), () => '');
  const slot = await read('slot');
  if (slot !== 'A' && slot !== 'B') {
    throw new KubeosError('E_SLOT', `cannot tell the booted slot: ${join(runDir, 'slot')} says ${JSON.stringify(slot)}`, { hint: 'the agent runs on hosts booted by a kubeos initramfs' });
  }
  const rawKind = await read('boot');
  const kind: BootKind = rawKind === 'trying' || rawKind === 'fallback' ? rawKind : 'good';
  const release = await readFile(osRelease, 'utf8').catch(() => '');
  const version = /^VERSION_ID="?([^"\n]+)"?$/m.exec(release)?.[1];
  if (version === undefined) throw new KubeosError('E_SLOT', `${osRelease} has no VERSION_ID`);
  return { slot, kind, version };
}
