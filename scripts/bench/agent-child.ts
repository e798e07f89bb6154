/**
 * Child process of the agent bench: one `upgrade` into a file-backed slot, then its wall time and
 * peak RSS (VmHWM), and what the install fetched (its transfer report).   node agent-child.js CONFIG BUNDLE_URL
 */
import { performance } from 'node:perf_hooks';
import { loadAgentConfig } from '../../runtime/agent/agent-config.js';
import { upgrade } from '../../runtime/agent/upgrade.js';
import { childCpuSeconds, peakRssMiB } from './measure.js';

const [config, bundle] = process.argv.slice(2);
if (!config || !bundle) {
  process.stderr.write('usage: agent-child.js CONFIG BUNDLE_URL\n');
  process.exit(2);
}
const start = performance.now();
const cpuStart = process.cpuUsage();
const result = await upgrade(await loadAgentConfig(config), { bundle, reboot: false, allowDowngrade: true });
const seconds = (performance.now() - start) / 1000;
const cpu = process.cpuUsage(cpuStart);
const transfer = result.kind === 'installed' ? result.transfer : undefined;
// this process's threads (the hashing workers too), and the zstd children it waited for
const cpuSeconds = (cpu.user + cpu.system) / 1e6 + (await childCpuSeconds());
process.stdout.write(`${JSON.stringify({ seconds, cpuSeconds, maxRssMiB: await peakRssMiB(), transfer })}\n`);
