#!/usr/bin/env node
/** The agent's own bin, bundled into images as /usr/bin/kubeos (only `kubeos agent ...`). */
import { runProgram } from '../../cli/run-program.js';
import { agentCommand } from './agent-command.js';

await runProgram({ usage: '$0 agent <command> [options]\n\nThe kubeos agent on this host: its slots, updates and OS configuration.', commands: [agentCommand], hint: 'kubeos agent --help lists the commands' });
