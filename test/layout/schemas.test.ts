/**
 * The JSON Schemas editors get (images/image.schema.json, layouts/layout.schema.json, referenced by
 * each definition's $schema) agree with the validators kubeos runs: every shipped definition passes
 * both, the schemas name exactly the fields the validators know, and a misspelt field fails both.
 */
import test from 'ava';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { agentKeys, imageKeys, kernelKeys, rootfsKeys, validateImage } from '../../builder/image/load-image.js';
import { layoutKeys, partitionKeys } from '../../builder/layout/validate-layout.js';
import { roles } from '../../builder/layout/layout.js';
import { rootfsSourceTypes } from '../../builder/source/rootfs-source.js';
import { projectRoot } from '../../builder/project-root.js';

const root = projectRoot();
const json = async (path: string) => JSON.parse(await readFile(join(root, path), 'utf8')) as Record<string, any>;
/** A validator per schema: ajv keeps every schema it compiled under its $id. */
const compile = (schema: Record<string, any>) => new Ajv2020({ allErrors: true, strict: false }).compile(schema);

const imageFiles = ['images/minimal/image.json', 'images/debian/image.json', 'qemu-tests/images/unhealthy/image.json', 'qemu-tests/images/fleet-node/image.json'];

test('every shipped image definition and layout passes its schema and names it in $schema', async (t) => {
  const imageSchema = compile(await json('images/image.schema.json'));
  for (const file of imageFiles) {
    const data = await json(file);
    t.true(imageSchema(data), `${file}: ${JSON.stringify(imageSchema.errors)}`);
    t.regex(data['$schema'] as string, /image\.schema\.json$/, file);
    t.notThrows(() => validateImage(data, file, join(root, file, '..')), file);
  }
  const layoutSchema = compile(await json('layouts/layout.schema.json'));
  const layouts = (await readdir(join(root, 'layouts'))).filter((f) => f.endsWith('.json') && !f.endsWith('.schema.json'));
  t.true(layouts.length >= 4);
  for (const file of layouts) {
    const data = await json(`layouts/${file}`);
    t.true(layoutSchema(data), `${file}: ${JSON.stringify(layoutSchema.errors)}`);
    t.is(data['$schema'], './layout.schema.json', file);
  }
});

test('the schemas name exactly the fields and values the validators know', async (t) => {
  const image = await json('images/image.schema.json');
  t.deepEqual(Object.keys(image['properties']).sort(), [...imageKeys].sort());
  t.deepEqual(Object.keys(image['properties']['kernel']['properties']).sort(), [...kernelKeys].sort());
  t.deepEqual(Object.keys(image['properties']['agent']['anyOf'][1]['properties']).sort(), [...agentKeys].sort());
  const sourceTypes = (image['properties']['rootfs']['oneOf'] as { properties: { type: { enum?: string[]; const?: string } } }[]).flatMap((s) => s.properties.type.enum ?? [s.properties.type.const!]);
  t.deepEqual(sourceTypes.sort(), [...rootfsSourceTypes].sort());
  for (const variant of image['properties']['rootfs']['oneOf'] as { properties: Record<string, unknown> }[]) {
    const type = (variant.properties['type'] as { enum?: string[]; const?: string });
    for (const name of type.enum ?? [type.const!]) t.deepEqual(Object.keys(variant.properties).sort(), [...rootfsKeys[name as keyof typeof rootfsKeys]].sort(), name);
  }
  const layout = await json('layouts/layout.schema.json');
  t.deepEqual(Object.keys(layout['properties']).sort(), [...layoutKeys].sort());
  t.deepEqual(Object.keys(layout['properties']['partitions']['items']['properties']).sort(), [...partitionKeys].sort());
  t.deepEqual(layout['properties']['partitions']['items']['properties']['role']['enum'], [...roles]);
});

test('a misspelt field fails the schema as it fails the validator', async (t) => {
  const schema = compile(await json('images/image.schema.json'));
  const data = { ...(await json('images/minimal/image.json')), kernal: {} };
  t.false(schema(data));
  t.true(schema.errors?.some((e) => e.keyword === 'additionalProperties' && (e.params as { additionalProperty?: string }).additionalProperty === 'kernal'));
  t.throws(() => validateImage(data, 'image.json', join(root, 'images/minimal')), { message: /kernal: expected "kernel"/ });
});
