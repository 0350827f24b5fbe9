import { describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

/**
 * Config fuzz: hundreds of generated bad configs, each derived from a valid one by one mutation
 * (wrong type, unknown key, bad duration or size, unset env var). Every one must fail with a
 * ConfigError whose single line names the YAML path; none may escape as another error.
 */
type Doc = Record<string, unknown>;

const VALID: Doc = {
  postgres: {
    url: 'postgres://u:p@h:5432/db',
    slot: 'outboxd',
    publication: 'outboxd',
    createSlot: true,
    createPublication: true,
    statusInterval: '10s',
    heartbeat: { interval: '30s', prefix: 'hb' },
    lagPollInterval: '10s',
    connectTimeout: '10s',
    reconnect: { initial: '500ms', max: '30s' },
  },
  outbox: {
    tables: [
      { name: 'public.outbox', columns: { id: 'id', aggregatetype: 'aggregatetype', aggregateid: 'aggregateid', payload: 'payload' } },
    ],
    messages: { enabled: true, prefix: 'outbox' },
    onPoison: 'halt',
  },
  pipeline: {
    maxInFlightMessages: 20000,
    maxInFlightBytes: '64MiB',
    batchMaxMessages: 2000,
    batchMaxBytes: '4MiB',
    linger: '5ms',
    retry: { initial: '200ms', max: '30s' },
  },
  sink: {
    type: 'kafka',
    kafka: {
      brokers: ['k1:9092', 'k2:9092'],
      clientId: 'outboxd',
      topic: 'outbox.event.{aggregatetype}',
      deadLetterTopic: 'dlq',
      compression: 'gzip',
      maxMessageBytes: '1MiB',
      connectionTimeout: '10s',
      requestTimeout: '30s',
      sasl: { mechanism: 'plain', username: 'u', password: 'p' },
    },
  },
  http: { host: '0.0.0.0', port: 9187 },
  log: { level: 'info' },
  shutdown: { grace: '30s' },
};

const DURATIONS = /(Interval|Timeout|interval|initial|max|linger|grace|connectTimeout)$/;
const SIZES = /Bytes$/;

interface Mutation {
  path: string;
  doc: Doc;
  env?: NodeJS.ProcessEnv;
}

function clone(d: Doc): Doc {
  return structuredClone(d);
}

function setAt(doc: Doc, path: Array<string | number>, value: unknown, remove = false): void {
  let cur: Record<string | number, unknown> = doc as Record<string | number, unknown>;
  for (const k of path.slice(0, -1)) cur = cur[k] as Record<string | number, unknown>;
  const last = path[path.length - 1] as string | number;
  if (remove) delete cur[last];
  else cur[last] = value;
}

function render(path: Array<string | number>): string {
  return path.reduce<string>((acc, k) => (typeof k === 'number' ? `${acc}[${k}]` : acc ? `${acc}.${k}` : k), '');
}

function leaves(v: unknown, path: Array<string | number> = []): Array<{ path: Array<string | number>; value: unknown }> {
  if (Array.isArray(v)) return v.flatMap((x, i) => leaves(x, [...path, i]));
  if (v !== null && typeof v === 'object') return Object.entries(v).flatMap(([k, x]) => leaves(x, [...path, k]));
  return [{ path, value: v }];
}

function mappings(v: unknown, path: Array<string | number> = []): Array<Array<string | number>> {
  if (Array.isArray(v)) return v.flatMap((x, i) => mappings(x, [...path, i]));
  if (v !== null && typeof v === 'object') return [path, ...Object.entries(v).flatMap(([k, x]) => mappings(x, [...path, k]))];
  return [];
}

function mutations(): Mutation[] {
  const out: Mutation[] = [];
  for (const { path, value } of leaves(VALID)) {
    const key = String(path[path.length - 1]);
    const wrong: unknown[] = [];
    if (typeof value === 'number') wrong.push('lots', [1], { n: 1 }, 1.5, -5);
    if (typeof value === 'boolean') wrong.push('maybe', 3, [true]);
    if (typeof value === 'string') {
      wrong.push({ nested: 'map' }, [['nested']]);
      if (DURATIONS.test(key)) wrong.push('10 parsecs', '5', '-1s', 'fast');
      if (SIZES.test(key)) wrong.push('a lot', '-1MiB', '1 TB');
    }
    for (const w of wrong) {
      const doc = clone(VALID);
      setAt(doc, path, w);
      out.push({ path: render(path), doc });
    }
    if (typeof value === 'string') {
      const doc = clone(VALID);
      setAt(doc, path, '${OUTBOXD_FUZZ_UNSET_VAR}');
      out.push({ path: render(path), doc, env: {} });
      const doc2 = clone(VALID);
      setAt(doc2, path, '${OUTBOXD_FUZZ_UNSET_VAR:?needed for fuzz}');
      out.push({ path: render(path), doc: doc2, env: {} });
    }
  }
  for (const path of mappings(VALID)) {
    const doc = clone(VALID);
    const target = path.length === 0 ? doc : (path.reduce<unknown>((acc, k) => (acc as Record<string | number, unknown>)[k], doc) as Doc);
    target.bogusKey = 1;
    out.push({ path: render([...path, 'bogusKey']), doc });
  }
  return out;
}

const all = mutations();

// Some mutations are accepted on purpose: a number where a string is expected (it is read as
// its text), bare numbers for sizes (bytes), and the like. The fuzz asserts only on errors.
describe('config fuzz', () => {
  it('generates at least 200 bad configs', () => {
    expect(all.length).toBeGreaterThanOrEqual(200);
  });

  it('every rejected config fails with one line that names a path on the way to the mutation; nothing else is thrown', () => {
    let rejected = 0;
    for (const m of all) {
      const text = stringify(m.doc);
      let err: unknown = null;
      try {
        parseConfig(text, m.env ?? {});
      } catch (e) {
        err = e;
      }
      if (err === null) continue;
      rejected++;
      expect(err, `${m.path}: ${String(err)}`).toBeInstanceOf(ConfigError);
      const ce = err as ConfigError;
      expect(ce.message).not.toContain('\n');
      expect(ce.message.startsWith(`config ${ce.path}: `), ce.message).toBe(true);
      // The error names the mutated path, or the section whose check it failed.
      const prefix = ce.path.replace(/\[\d+\]$/, '');
      expect(m.path.startsWith(prefix) || ce.path.startsWith(m.path.replace(/\[\d+\]$/, '')), `${m.path} → ${ce.message}`).toBe(true);
    }
    expect(rejected).toBeGreaterThanOrEqual(200);
  });
});
