/** The builder CLI prints through the same helpers as the agent's CLI (which cannot import builder/). */
export * from '../../runtime/cli/output.js';
