#!/usr/bin/env node
// `npm run schema`: writes, from the one declaration in src/config/schema.ts (schema-json.ts,
// built into dist/):
// - config/outboxd.schema.json, the JSON Schema of the config file that editors use;
// - the `config` property of helm/outboxd/values.schema.json (the rest of that file is the
//   chart's own, edited there), so that Helm refuses a config outboxd would refuse.
// A unit test fails when either committed file is not what this writes.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { configValuesSchema, toJsonSchema } from '../dist/config/schema-json.js';

const file = fileURLToPath(new URL('../config/outboxd.schema.json', import.meta.url));
writeFileSync(file, `${JSON.stringify(toJsonSchema(), null, 2)}\n`);
process.stderr.write(`wrote ${file}\n`);

const values = fileURLToPath(new URL('../helm/outboxd/values.schema.json', import.meta.url));
const chart = JSON.parse(readFileSync(values, 'utf8'));
chart.properties.config = configValuesSchema();
writeFileSync(values, `${JSON.stringify(chart, null, 2)}\n`);
process.stderr.write(`wrote ${values}\n`);
