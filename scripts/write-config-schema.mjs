#!/usr/bin/env node
// `npm run schema`: writes config/outboxd.schema.json, the JSON Schema of the config file that
// editors use, from the one declaration in src/config/schema.ts (schema-json.ts, built into dist/). A unit test
// fails when the committed file is not what this writes.
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { toJsonSchema } from '../dist/config/schema-json.js';

const file = fileURLToPath(new URL('../config/outboxd.schema.json', import.meta.url));
writeFileSync(file, `${JSON.stringify(toJsonSchema(), null, 2)}\n`);
process.stderr.write(`wrote ${file}\n`);
