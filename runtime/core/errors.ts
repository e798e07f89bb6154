/**
 * The one error type of kubeos. Callers branch on `code`, never on message text; `hint` tells a
 * person what to do next. The CLI is the only place that turns one into output and an exit code.
 */
export const errorCodes = [
  'E_USAGE',
  'E_TOOL_MISSING',
  'E_TOOL_FAILED',
  'E_LAYOUT_INVALID',
  'E_LAYOUT_DOES_NOT_FIT',
  'E_IMAGE_INVALID',
  'E_ROOTFS_TOO_BIG',
  'E_SOURCE_INVALID',
  'E_SOURCE_HOSTILE',
  'E_SOURCE_TRUNCATED',
  'E_FS_UNKNOWN',
  'E_KERNEL_FETCH',
  'E_OUTPUT',
  'E_QEMU',
  'E_QEMU_TIMEOUT',
  'E_BUNDLE_INVALID',
  'E_BUNDLE_TRUNCATED',
  'E_SIGNATURE',
  'E_UNKNOWN_KEY',
  'E_HASH_MISMATCH',
  'E_KEY_INVALID',
  'E_CHANNEL_INVALID',
  'E_CHANNEL_EXPIRED',
  'E_CHANNEL_ROLLBACK',
  'E_PUBLISH',
  'E_FETCH',
  'E_DELTA',
  'E_INCOMPATIBLE',
  'E_DOWNGRADE',
  'E_LOCKED',
  'E_BOOTENV',
  'E_SLOT',
  'E_KUBERNETES',
  'E_KUBECONFIG_MISSING',
  'E_PLAN_INVALID',
  'E_OSUPGRADE_INVALID',
  'E_OSUPGRADE_NOT_FOUND',
  'E_OSCONFIG_INVALID',
  'E_OSCONFIG_NOT_FOUND',
  'E_VERSION_NOT_OFFERED',
  'E_ROLLOUT_FAILED',
  'E_LEADERSHIP_LOST',
  'E_STATE_CORRUPT',
  'E_CONFIG_INVALID',
  'E_CONFIG_ROLLED_BACK',
  'E_CONFIG_UNSUPPORTED',
  'E_CONFIG_NO_PREVIOUS',
] as const;

export type ErrorCode = (typeof errorCodes)[number];

export interface KubeosErrorOptions {
  hint?: string;
  cause?: unknown;
  /** Machine-readable details for `--json` output (a path, an expected and an actual value). */
  details?: Record<string, unknown>;
}

export class KubeosError extends Error {
  override readonly name = 'KubeosError';
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: KubeosErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
    this.details = options.details;
  }

  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, hint: this.hint, details: this.details };
  }
}

export function isKubeosError(error: unknown, code?: ErrorCode): error is KubeosError {
  return error instanceof KubeosError && (code === undefined || error.code === code);
}

/** Anything thrown, as a KubeosError: itself if it is one, else wrapped with `code` (the message kept, the original as cause). */
export function asKubeosError(error: unknown, code: ErrorCode): KubeosError {
  return isKubeosError(error) ? error : new KubeosError(code, error instanceof Error ? error.message : String(error), { cause: error });
}
