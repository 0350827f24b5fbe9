import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { TSchema } from '@sinclair/typebox';
import { Ajv2020 } from 'ajv/dist/2020.js';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { COLUMN_FIELDS, ConfigSchema } from '../../src/config/schema.js';
import { configValuesSchema, toJsonSchema } from '../../src/config/schema-json.js';
import { expectDocumentsExactly } from './docs-sources.js';

/**
 * The config is declared once (src/config/schema.ts). These tests keep what derives from it in
 * step: the published JSON Schema, the example files editors open with it, and the reference in
 * docs/config.md.
 */
const ROOT = join(import.meta.dirname, '../..');
const read = (f: string) => readFileSync(join(ROOT, f), 'utf8');

const EXAMPLES = [
  ...readdirSync(join(ROOT, 'config'))
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => `config/${f}`),
  ...readdirSync(join(ROOT, 'docs/examples'))
    .filter((f) => f.endsWith('.yaml'))
    .map((f) => `docs/examples/${f}`),
];

describe('config/outboxd.schema.json', () => {
  it('is what `npm run schema` writes from the declaration', () => {
    expect(JSON.parse(read('config/outboxd.schema.json'))).toEqual(toJsonSchema());
  });

  it('accepts every example config, which names it in a yaml-language-server modeline', () => {
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    const check = ajv.compile(toJsonSchema());
    expect(EXAMPLES.length).toBeGreaterThan(5);
    for (const f of EXAMPLES) {
      const text = read(f);
      expect(text.split('\n')[0], `${f}: modeline`).toMatch(/^# yaml-language-server: \$schema=(\.\.\/)*(config\/)?outboxd\.schema\.json$/);
      const ok = check(parse(text));
      expect(ok, `${f}: ${ajv.errorsText(check.errors)}`).toBe(true);
    }
  });

  it('refuses what the relay refuses: an unknown key, a bad duration, a secret given twice', () => {
    const check = new Ajv2020({ strict: false }).compile(toJsonSchema());
    expect(check({ postgres: { url: 'postgres://h/db', slott: 'x' } })).toBe(false);
    expect(check({ postgres: { url: 'postgres://h/db', statusInterval: '10 sec' } })).toBe(false);
    expect(check({ postgres: { url: 'postgres://h/db', password: 'a', passwordFile: '/f' } })).toBe(false);
    expect(check({ postgres: { url: 'postgres://h/db', statusInterval: '${STATUS:-10s}' } })).toBe(true);
  });
});

describe('helm/outboxd/values.schema.json: config', () => {
  const values = () => JSON.parse(read('helm/outboxd/values.schema.json')) as { properties: { config: unknown } };

  it('is what `npm run schema` writes from the declaration', () => {
    expect(values().properties.config).toEqual(configValuesSchema());
  });

  it('accepts every example config as Helm reads it (YAML 1.1: a bare off is false)', () => {
    const check = new Ajv2020({ strict: false, allErrors: true }).compile(configValuesSchema());
    let booleans = 0;
    for (const f of EXAMPLES) {
      const doc = parse(read(f), { version: '1.1' });
      if (JSON.stringify(doc).includes('"mode":false')) booleans++;
      expect(check(doc), `${f}: ${JSON.stringify(check.errors)}`).toBe(true);
    }
    expect(booleans, 'an example writes a bare off').toBeGreaterThan(0);
  });

  it('refuses a boolean where outboxd would: in an enum without off, and in a string', () => {
    const check = new Ajv2020({ strict: false }).compile(configValuesSchema());
    const url = 'postgres://h/db';
    expect(check({ postgres: { url }, outbox: { prune: { mode: false } } })).toBe(true);
    expect(check({ postgres: { url }, outbox: { onPoison: false } })).toBe(false);
    expect(check({ postgres: { url }, outbox: { prune: { mode: true } } })).toBe(false);
    expect(check({ postgres: { url, heartbeat: { prefix: true } } })).toBe(false);
    expect(check({ postgres: { url }, pipeline: { linger: 0 } })).toBe(true);
  });
});

/** Every documented key path (`postgres.heartbeat.interval`), with its default when the row gives one literal. */
function documented(): Map<string, string | null> {
  const keys = new Map<string, string | null>();
  let section: string | null = null;
  for (const line of read('docs/config.md').split('\n')) {
    const heading = /^#{2,3} `([a-z.]+)`\s*$/.exec(line);
    if (heading) {
      section = heading[1] as string;
      continue;
    }
    if (/^#{1,3} /.test(line)) section = null;
    if (section === null || !line.startsWith('| `')) continue;
    const cells = line.split(' | ');
    const names = [...(cells[0] as string).matchAll(/`([^`]+)`/g)].map((m) => m[1] as string);
    const fallback = /^`([^`]*)`$/.exec((cells[2] ?? '').trim());
    for (const name of names) keys.set(`${section}.${name}`, names.length === 1 && fallback ? (fallback[1] as string) : null);
  }
  return keys;
}

/** Every key path the schema declares, with its default. */
function declared(): Map<string, unknown> {
  const keys = new Map<string, unknown>();
  const walk = (s: TSchema, path: string) => {
    if (s.type === 'object') {
      const props = s.properties as Record<string, TSchema>;
      const fields: readonly string[] = COLUMN_FIELDS;
      const mapsColumns = fields.every((f) => f in props);
      if (mapsColumns) keys.set(`${path}.<field>`, undefined);
      for (const [k, v] of Object.entries(props)) if (!mapsColumns || !fields.includes(k)) walk(v, path ? `${path}.${k}` : k);
      return;
    }
    keys.set(path, s.default);
    if (s.type === 'array' && (s.items as TSchema).type === 'object') walk(s.items as TSchema, `${path}[]`);
    const files = (s.anyOf as TSchema[] | undefined)?.find((x) => x.type === 'object');
    if (files) walk(files, path);
  };
  walk(ConfigSchema, '');
  return keys;
}

describe('docs/config.md', () => {
  it('documents exactly the keys the schema declares', () => {
    expectDocumentsExactly([...documented().keys()].sort(), [...declared().keys()].sort());
  });

  it('gives the defaults the schema declares', () => {
    const schema = declared();
    let compared = 0;
    for (const [key, doc] of documented()) {
      const fallback = schema.get(key);
      if (doc === null || fallback === undefined) continue;
      expect(doc, `default of ${key}`).toBe(String(fallback));
      compared++;
    }
    expect(compared).toBeGreaterThan(40);
  });
});
