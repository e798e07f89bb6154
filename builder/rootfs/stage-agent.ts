/**
 * An image built without trusted keys carries an agent that refuses every bundle (E_UNKNOWN_KEY);
 * `kubeos build --trusted-key` or agent.trustedKeys in image.json give it keys.
 *
 * Puts the agent into a root tree: Node.js and zstd (with their libraries), the bundled agent,
 * `kubeos` on PATH, the trusted public keys, and /usr/lib/kubeos/agent.json. Read-only locations
 * only: /etc is an overlay that persists, so a file there could outlive the image it came with.
 */
import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { KubeosError } from '../../runtime/core/errors.js';
import { findTool } from '../../runtime/core/exec.js';
import { parsePublicKey } from '../../runtime/core/crypto/keys.js';
import { readFile } from 'node:fs/promises';
import { agentLauncher, bundleAgent } from './bundle-agent.js';
import { copyBinary } from './copy-binary.js';

export const agentConfigPath = '/usr/lib/kubeos/agent.json';

/** Where an image's agent keeps its host state (deploy/agent-daemonset.yaml mounts each of these). */
export const imageAgentPaths = {
  bootEnv: '/boot/efi/EFI/BOOT/grubenv',
  stateDir: '/persist/.kubeos/agent',
  runDir: '/run/kubeos',
  osRelease: '/usr/lib/os-release',
} as const;

export interface AgentStageInput {
  tree: string;
  compatible: string;
  bootTries: number;
  updateServer: string | undefined;
  channel: string | undefined;
  updates: 'channel' | 'cluster';
  pollSeconds: number;
  trustedKeys: string[];
  slotPartitions: { A: string; B: string };
  signal?: AbortSignal;
}

export async function stageAgent(input: AgentStageInput): Promise<void> {
  const { tree } = input;
  const zstd = await findTool('zstd');
  if (zstd === undefined) throw new KubeosError('E_TOOL_MISSING', 'missing host tool: zstd (Debian package zstd)', { hint: 'apt-get install zstd', details: { missing: ['zstd'], packages: ['zstd'] } });
  // esbuild bundles in a process of its own while the binaries are copied (one after the
  // other: they share libraries)
  const bundled = bundleAgent(join(tree, 'usr/lib/kubeos/agent'));
  try {
    await copyBinary(tree, process.execPath, '/usr/bin/node', input.signal);
    await copyBinary(tree, zstd, '/usr/bin/zstd', input.signal);
  } finally {
    await bundled.catch(() => {});
  }
  await bundled;

  await mkdir(join(tree, 'usr/lib/kubeos/keys'), { recursive: true });
  await writeFile(join(tree, 'usr/bin/kubeos'), agentLauncher('/usr/bin/node', '/usr/lib/kubeos/agent/kubeos.mjs'));
  await chmod(join(tree, 'usr/bin/kubeos'), 0o755);

  const keyPaths: string[] = [];
  for (const [index, key] of input.trustedKeys.entries()) {
    let pem: string;
    try {
      pem = await readFile(key, 'utf8');
      parsePublicKey(pem, key);
    } catch (error) {
      throw new KubeosError('E_KEY_INVALID', `trusted key ${key} is not a readable public key`, { cause: error });
    }
    const name = `${String(index).padStart(2, '0')}-${basename(key).replace(/[^A-Za-z0-9._-]/g, '_')}`;
    await copyFile(key, join(tree, 'usr/lib/kubeos/keys', name));
    keyPaths.push(`/usr/lib/kubeos/keys/${name}`);
  }
  await writeFile(join(tree, agentConfigPath), `${JSON.stringify({
    compatible: input.compatible,
    bootTries: input.bootTries,
    updateServer: input.updateServer ?? '',
    channel: input.channel ?? '',
    updates: input.updates,
    trustedKeys: keyPaths,
    ...imageAgentPaths,
    slots: { A: { partition: input.slotPartitions.A }, B: { partition: input.slotPartitions.B } },
    pollSeconds: input.pollSeconds,
    jitterSeconds: Math.min(60, input.pollSeconds),
  }, null, 2)}\n`);
}
