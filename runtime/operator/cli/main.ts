#!/usr/bin/env node
/** The operator's bin, what its container image runs: `kubeos operator run` and `kubeos rollout ...`. */
import { runProgram } from '../../cli/run-program.js';
import { operatorCommand } from './operator-command.js';
import { rolloutCommand } from './rollout-command.js';

await runProgram({
  usage: '$0 <command> [options]\n\nThe kubeos fleet operator: roll OSUpgrades and OSConfigs out across a cluster, and follow them.',
  commands: [operatorCommand, rolloutCommand],
  hint: 'kubeos --help lists commands; kubeos <command> --help their options',
});
