import { type TSchema, OptionalKind } from '@sinclair/typebox';
import { ConfigError } from '../errors.js';
import { redact } from '../redact.js';
import { parseTemplate } from './template.js';
import type { SecretKind } from './schema-kit.js';
import { parseDurationMs, parseSizeBytes } from './units.js';

/**
 * Checks a parsed, interpolated YAML document against the schema (schema.ts) and fills in the
 * defaults. Every error is one ConfigError that names the YAML path, what was wrong and what is
 * allowed: unknown keys (with "did you mean"), types, ranges, units. Values are coerced where a
 * YAML or `${VAR}` author would expect it: `"9187"` is an integer, `"true"` a boolean, `5` a
 * string, a single string a one-item list. A boolean is not text: a YAML 1.1 reader (Helm)
 * makes one of a bare off, on, no or yes, so an enum with off (on) takes false (true) as that
 * word, and any other text key refuses it, naming the type. A secret (`x-secret`) is never
 * shown, and must be written as text: YAML reads `password: 0123` as the number 123.
 */
export function validate(schema: TSchema, value: unknown, path = ''): unknown {
  const kind = schema['x-kind'] as string | undefined;
  if (kind === 'tls') return tls(schema, value, path);
  if (schema.type === 'object') return mapping(schema, value, path);
  if (schema.type === 'array') return list(schema, value, path);
  if (schema.anyOf) return literal(schema, value, path);
  if (schema.type === 'integer') return integer(schema, value, path);
  if (schema.type === 'boolean') return boolean(value, path);
  if (schema.type === 'string') return text(schema, value, path);
  throw new Error(`config schema: no rule for ${path}`);
}

const absent = (v: unknown) => v === undefined || v === null;

function mapping(schema: TSchema, value: unknown, path: string): Record<string, unknown> {
  if (absent(value)) value = {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new ConfigError(path, `must be a mapping, got ${describe(value)}`);
  const raw = value as Record<string, unknown>;
  const props = schema.properties as Record<string, TSchema>;
  const allowed = Object.keys(props);
  for (const key of Object.keys(raw)) {
    if (allowed.includes(key)) continue;
    const hint = closest(key, allowed);
    throw new ConfigError(join(path, key), `unknown key${hint ? ` (did you mean "${hint}"?)` : ''}; allowed here: ${allowed.join(', ')}`);
  }
  for (const [a, b] of (schema['x-exclusive'] as Array<[string, string]> | undefined) ?? []) {
    if (!absent(raw[a]) && !absent(raw[b])) throw new ConfigError(join(path, b), `set either ${a} or ${b}, not both`);
  }
  for (const [a, b] of (schema['x-one-of'] as Array<[string, string]> | undefined) ?? []) {
    if (absent(raw[a]) && absent(raw[b])) throw new ConfigError(join(path, a), `is required (or ${b})`);
  }
  const out: Record<string, unknown> = {};
  for (const [key, child] of Object.entries(props)) {
    const v = raw[key];
    const at = join(path, key);
    const given = !absent(v) && !(v === '' && child.type !== 'array');
    if (given) out[key] = validate(child, v, at);
    else if (child.default !== undefined) out[key] = validate(child, structuredClone(child.default), at);
    else if (child[OptionalKind] !== 'Optional') throw new ConfigError(at, 'is required');
  }
  return out;
}

function list(schema: TSchema, value: unknown, path: string): unknown[] {
  if (typeof value === 'object' && value !== null && !Array.isArray(value))
    throw new ConfigError(path, `must be a list, got ${describe(value)}`);
  const items = Array.isArray(value) ? value : [value];
  const itemPath = (i: number) => (Array.isArray(value) ? `${path}[${i}]` : path);
  const item = schema.items as TSchema;
  const split = schema['x-split'] as string | undefined;
  const out = items.flatMap((v, i) => {
    if (split === undefined) return [validate(item, v, itemPath(i))];
    if (typeof v !== 'string' || v === '') throw new ConfigError(itemPath(i), `must be a non-empty string, got ${describe(v)}`);
    // "a,b" too: env vars commonly carry lists that way.
    return v
      .split(split)
      .map((s) => s.trim())
      .filter((s) => s !== '');
  });
  if (schema.minItems !== undefined && out.length < schema.minItems) throw new ConfigError(path, 'is required: give at least one');
  return out;
}

function literal(schema: TSchema, value: unknown, path: string): string {
  const allowed = (schema.anyOf as TSchema[]).map((s) => s.const as string);
  // YAML 1.1 (Helm's values, PyYAML) reads a bare off as false and on as true: where the enum
  // has that word, the boolean can only have been it (docs/config.md#yaml-11-and-helm).
  const word = yaml11Word(value);
  if (word !== null && allowed.includes(word)) return word;
  if (typeof value === 'boolean') throw new ConfigError(path, `must be one of ${allowed.join(', ')}, got ${describeBoolean(value)}`);
  const v = typeof value === 'number' ? String(value) : value;
  if (typeof v !== 'string' || !allowed.includes(v)) {
    throw new ConfigError(path, `must be one of ${allowed.join(', ')}, got ${typeof v === 'string' ? `"${v}"` : describe(v)}`);
  }
  return v;
}

/** The word a YAML 1.1 reader turned into this boolean, if the enum has it: off for false, on for true. */
function yaml11Word(value: unknown): 'off' | 'on' | null {
  return value === false ? 'off' : value === true ? 'on' : null;
}

/**
 * A boolean where text was wanted, as an error shows it: most often a YAML 1.1 reader (Helm)
 * took a bare off/on, no/yes for one, and quoting the value is the fix.
 */
export function describeBoolean(value: boolean): string {
  return value
    ? 'the boolean true (YAML 1.1 reads a bare on as true; quote it)'
    : 'the boolean false (YAML 1.1 reads a bare off as false; quote it)';
}

function integer(schema: TSchema, value: unknown, path: string): number {
  const n = typeof value === 'string' && /^\s*-?\d+\s*$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n)) throw new ConfigError(path, `must be an integer, got ${describe(value)}`);
  checkRange(path, n, schema.minimum, schema.maximum, String(n));
  return n;
}

function boolean(value: unknown, path: string): boolean {
  if (typeof value === 'boolean') return value;
  if (value === 'true') return true;
  if (value === 'false') return false;
  throw new ConfigError(path, `must be true or false, got ${describe(value)}`);
}

function text(schema: TSchema, value: unknown, path: string): string {
  const kind = schema['x-kind'] as string | undefined;
  if (kind === 'size' && typeof value === 'number' && Number.isInteger(value) && value >= 0) value = String(value);
  if (kind === 'duration' && value === 0) value = '0';
  const secret = schema['x-secret'] as SecretKind | undefined;
  if ((secret === 'value' || secret === 'url') && typeof value !== 'string') {
    const as = typeof value === 'number' ? 'a number' : typeof value === 'boolean' ? 'true or false' : describe(value);
    throw new ConfigError(path, `must be text; YAML read this secret as ${as}, which may not be what was written: quote it`);
  }
  if (typeof value === 'boolean') throw new ConfigError(path, `${textWanted(kind)}, got ${describeBoolean(value)}`);
  if (typeof value === 'number') value = String(value);
  if (typeof value !== 'string') throw new ConfigError(path, `must be a string, got ${describe(value)}`);
  if (kind === 'duration') {
    const ms = parseDurationMs(value);
    if (ms === undefined) throw new ConfigError(path, `must be a duration like 500ms, 10s or 5m, got ${describe(value)}`);
    checkRange(path, ms, schema['x-min'], schema['x-max'], value);
  } else if (kind === 'size') {
    const bytes = parseSizeBytes(value);
    if (bytes === undefined) throw new ConfigError(path, `must be a size like 64MiB, 1MB or 4096, got ${describe(value)}`);
    checkRange(path, bytes, schema['x-min'], schema['x-max'], value);
  } else if (kind === 'identifier') {
    if (!new RegExp(schema.pattern as string).test(value)) {
      throw new ConfigError(path, `must be a lower-case identifier ([a-z_][a-z0-9_]*, at most 63 chars), got "${value}"`);
    }
  } else if (kind === 'template') {
    try {
      parseTemplate(value);
    } catch (err) {
      throw new ConfigError(path, (err as Error).message);
    }
  }
  return value;
}

/** What a text key wants, as its type error says it. */
function textWanted(kind: string | undefined): string {
  if (kind === 'duration') return 'must be a duration like 500ms, 10s or 5m';
  if (kind === 'size') return 'must be a size like 64MiB, 1MB or 4096';
  return 'must be a string';
}

/** TLS: `true` (the defaults), off (`false`, `"false"`, `""`), or a mapping of files and options. */
function tls(schema: TSchema, value: unknown, path: string): unknown {
  if (absent(value) || value === false || value === 'false' || value === '') return undefined;
  if (value === true || value === 'true') return true;
  const files = (schema.anyOf as TSchema[]).find((s) => s.type === 'object') as TSchema;
  return mapping(files, value, path);
}

function checkRange(path: string, n: number, min: unknown, max: unknown, shown: string): void {
  if (typeof min === 'number' && n < min) throw new ConfigError(path, `must be at least ${min}, got ${shown}`);
  if (typeof max === 'number' && n > max) throw new ConfigError(path, `must be at most ${max}, got ${shown}`);
}

export function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

/**
 * A value as an error shows it: redacted before it is shortened, since a cut secret or URL
 * password would no longer be recognised (and a value in the wrong key may be a secret).
 */
export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  const text = redact(String(v));
  if (typeof v === 'string') return `"${text.length > 40 ? `${text.slice(0, 40)}…` : text}"`;
  return `${typeof v} ${text}`;
}

function closest(key: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const a of allowed) {
    const d = distance(key.toLowerCase(), a.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = a;
    }
  }
  return best;
}

function distance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0] as number;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j] as number;
      dp[j] = Math.min((dp[j] as number) + 1, (dp[j - 1] as number) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length] as number;
}
