/**
 * The OSConfig custom resource (kubeos.io/v1alpha1, cluster-scoped): a node OS configuration
 * (runtime/core/os-config.ts) for the nodes it selects, rolled out by the same planner as an
 * OSUpgrade. The planner's "version" of an OSConfig is its configuration's digest, and its
 * "channel" the OSConfig's name (where each agent reads the configuration). A configuration that
 * changes the kernel command line reboots the node, so only then is the node drained first.
 */
import { createHash } from 'node:crypto';
import { isKubeosError, KubeosError } from '../core/errors.js';
import { parseOSConfig, type ConfigProblem, type OSConfig } from '../core/os-config.js';
import { describeProblems, isRecord, parseRolloutCommon, rolloutFrom, type OSUpgradeObject, type Problem, type Rollout } from './osupgrade.js';

export const osConfigApi = { group: 'kubeos.io', version: 'v1alpha1', plural: 'osconfigs', kind: 'OSConfig' } as const;

export type OSConfigObject = OSUpgradeObject;

/** Fields an OSUpgrade has and an OSConfig has not: refused, so a copied spec does not silently mean less. */
const upgradeOnly = ['version', 'channel', 'allowDowngrade', 'onFailureBudget'];

/** Canonical (sysctl keys sorted), so the operator and every agent compute the same digest. */
export function configDigest(config: OSConfig): string {
  const sysctl = Object.fromEntries(Object.keys(config.sysctl).sort().map((k) => [k, config.sysctl[k]]));
  const canonical = JSON.stringify({ sysctl, files: config.files, limits: config.limits, kernelArgs: config.kernelArgs });
  return `config-${createHash('sha256').update(canonical).digest('hex').slice(0, 16)}`;
}

/** A configuration that changes the kernel command line needs a trial boot: its nodes are drained first. */
export function configNeedsReboot(config: OSConfig): boolean {
  return config.kernelArgs.add.length > 0 || config.kernelArgs.remove.length > 0;
}

export interface ConfigRollout {
  rollout: Rollout;
  config: OSConfig;
  digest: string;
}

/** Reads an OSConfig; throws E_OSCONFIG_INVALID listing every problem of the spec and its config at once. */
export function readConfigRollout(object: OSConfigObject): ConfigRollout {
  const name = object.metadata?.name ?? '';
  const problems: Problem[] = [];
  const raw = object.spec;
  const spec = isRecord(raw) ? raw : {};
  if (!isRecord(raw)) problems.push({ path: 'spec', expected: 'an object', actual: raw });
  for (const key of upgradeOnly) if (spec[key] !== undefined) problems.push({ path: `spec.${key}`, expected: 'no such field in an OSConfig (it belongs to an OSUpgrade)', actual: spec[key] });
  const common = parseRolloutCommon(spec, problems);
  let config: OSConfig | undefined;
  if (spec['config'] === undefined) problems.push({ path: 'spec.config', expected: 'the configuration (sysctl, files, limits, kernelArgs)', actual: undefined });
  else {
    try {
      config = parseOSConfig(spec['config'], `OSConfig ${name}`);
    } catch (error) {
      if (!isKubeosError(error, 'E_CONFIG_INVALID')) throw error;
      const inner = (error.details as { problems?: ConfigProblem[] } | undefined)?.problems ?? [];
      for (const p of inner) problems.push({ path: `spec.config${p.path.slice(1)}`, expected: p.expected, actual: p.actual });
    }
  }
  if (problems.length > 0 || config === undefined) {
    throw new KubeosError('E_OSCONFIG_INVALID', `${name}: ${describeProblems(problems)}`, {
      hint: 'fix the OSConfig spec (kubectl explain osconfig.spec; docs/agent.md for each kind of setting); no node is touched until then',
      details: { problems },
    });
  }
  const digest = configDigest(config);
  const rollout = rolloutFrom(object, { version: digest, channel: name, allowDowngrade: false, onFailureBudget: 'pause', ...common });
  rollout.drainFirst = configNeedsReboot(config);
  rollout.failureReasons = { failed: 'ApplyFailed', fellBack: 'RolledBack' };
  return { rollout, config, digest };
}
