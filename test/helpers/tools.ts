/** Tests that need host tools: skipped when one is missing locally, failed under CI=true. */
import anyTest, { type TestFn } from 'ava';
import { findTool, type Tool } from '../../runtime/core/exec.js';

/** True when every tool is installed, or under CI=true (where a missing tool must fail the test). */
export async function canRun(tools: readonly Tool[]): Promise<boolean> {
  for (const tool of tools) if ((await findTool(tool)) === undefined) return process.env['CI'] === 'true';
  return true;
}

export async function testNeeding(tools: readonly Tool[]): Promise<TestFn> {
  if (await canRun(tools)) return anyTest;
  const skipped = anyTest.skip as unknown as TestFn;
  return skipped;
}
