/** Tests that need host tools: skipped when one is missing locally, failed under CI=true. */
import anyTest, { type TestFn } from 'ava';
import { findTool, type Tool } from '../../runtime/core/exec.js';

export async function testNeeding(tools: readonly Tool[]): Promise<TestFn> {
  const missing: string[] = [];
  for (const tool of tools) if ((await findTool(tool)) === undefined) missing.push(tool);
  if (missing.length === 0 || process.env['CI'] === 'true') return anyTest;
  const skipped = anyTest.skip as unknown as TestFn;
  return skipped;
}
