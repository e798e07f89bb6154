#!/usr/bin/env node
/** The `kubeos` bin: every command (builder/cli/commands.ts), run by the shared program runner. */
import { runProgram } from '../../runtime/cli/run-program.js';
import { commands } from './commands.js';

await runProgram({
  usage: '$0 <command> [options]\n\nBuild immutable A/B container-OS images, sign and publish updates, and roll them out.',
  commands,
  hint: 'kubeos --help lists commands; kubeos <command> --help their options',
  epilogue: 'Docs: README.md. Exit codes: 0 ok, 1 failed (see the error code), 2 bad usage.',
});
