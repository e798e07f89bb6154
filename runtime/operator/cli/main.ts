#!/usr/bin/env node
/**
 * The program of the cluster's container image (deploy/): `kubeos operator run` and `kubeos rollout`
 * for the operator Deployment, `kubeos agent` for the agent DaemonSet. No builder commands.
 */
import { agentCommand } from '../../agent/cli/agent-command.js';
import { runProgram } from '../../cli/run-program.js';
import { operatorCommand } from './operator-command.js';
import { rolloutCommand } from './rollout-command.js';

await runProgram({
  usage: '$0 <command> [options]\n\nkubeos in the cluster: the operator that rolls OSUpgrades and OSConfigs out, and the node agent of the DaemonSet.',
  commands: [operatorCommand, rolloutCommand, agentCommand],
  hint: 'kubeos --help lists commands; kubeos <command> --help their options',
});
