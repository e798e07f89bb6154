/**
 * The names and meaning of kubeos's variables in the GRUB environment block, shared by the
 * builder (initial block, grub.cfg) and the agent (upgrade, commit, rollback, status).
 *
 * kubeos_good   slot that last booted healthy and was committed ("A" or "B")
 * kubeos_try    slot being tried after an upgrade, or "" when none
 * kubeos_tries  tries left for kubeos_try; grub.cfg counts it down with save_env before booting
 * kubeos_failed slot that GRUB gave up on (its tries ran out), or ""
 */
export const slots = ['A', 'B'] as const;
export type Slot = (typeof slots)[number];

export interface BootEnv {
  good: Slot;
  trying: Slot | undefined;
  triesLeft: number;
  failed: Slot | undefined;
}

export const bootEnvVariables = ['kubeos_good', 'kubeos_try', 'kubeos_tries', 'kubeos_failed'] as const;

export function otherSlot(slot: Slot): Slot {
  return slot === 'A' ? 'B' : 'A';
}

export function bootEnvToGrub(env: BootEnv): Record<string, string> {
  return {
    kubeos_good: env.good,
    kubeos_try: env.trying ?? '',
    kubeos_tries: String(env.triesLeft),
    kubeos_failed: env.failed ?? '',
  };
}

function asSlot(value: string | undefined): Slot | undefined {
  return value === 'A' || value === 'B' ? value : undefined;
}

export function bootEnvFromGrub(vars: Record<string, string>): BootEnv {
  const tries = Number(vars['kubeos_tries'] ?? '0');
  return {
    good: asSlot(vars['kubeos_good']) ?? 'A',
    trying: asSlot(vars['kubeos_try']),
    triesLeft: Number.isInteger(tries) && tries >= 0 ? tries : 0,
    failed: asSlot(vars['kubeos_failed']),
  };
}

export const initialBootEnv: BootEnv = { good: 'A', trying: undefined, triesLeft: 0, failed: undefined };
