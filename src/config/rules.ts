import { ConfigError } from '../errors.js';
import { parsePgUrl } from './pg-url.js';

/**
 * The rules of the config that span keys, which the sections of the declaration (schema.ts,
 * schema-sink.ts) call from their `ruled` rule: each takes plain values and a YAML path, and
 * throws a ConfigError naming the key that is wrong.
 */

/** postgres.url: the hosts in the order they are tried (single-host URLs), and libpq's rule for which to keep. */
export function pgHosts(url: string) {
  try {
    const { hosts, targetSessionAttrs } = parsePgUrl(url);
    return { hosts, targetSessionAttrs };
  } catch (err) {
    throw new ConfigError('postgres.url', (err as Error).message);
  }
}

/** The most shards one outbox may have (postgres.shard.count). */
export const MAX_SHARDS = 64;

/** Shard `index` of `count` (0-based): postgres.shard. */
export interface Shard {
  readonly index: number;
  readonly count: number;
}

/** A shard's slot or publication name: `<base>_<index>_of_<count>`. */
export function shardName(base: string, shard: Shard): string {
  return `${base}_${shard.index}_of_${shard.count}`;
}

/**
 * postgres.shard: the slot and publication this shard uses, each `<name>_<index>_of_<count>`, and
 * the shard with the names it was derived from (a reshard and `setup` name the other shards).
 */
export function shardNames(p: { slot: string; publication: string }, shard: Shard | undefined, at: string) {
  if (shard === undefined) return { slot: p.slot, publication: p.publication, shard: undefined };
  if (shard.index >= shard.count)
    throw new ConfigError(
      `${at}.shard.index`,
      `must be below shard.count (${shard.count}), got ${shard.index}: shards are numbered 0 to count - 1`,
    );
  const slot = shardName(p.slot, shard);
  const publication = shardName(p.publication, shard);
  // Every shard's name must fit, not only this one's: setup creates them all, and PostgreSQL
  // truncates a publication name past 63 bytes (a NOTICE), which no shard would then find.
  const last = { index: shard.count - 1, count: shard.count };
  for (const key of ['slot', 'publication'] as const) {
    const longest = shardName(p[key], last);
    if (Buffer.byteLength(longest) > 63)
      throw new ConfigError(
        `${at}.${key}`,
        `with ${shard.count} shards it becomes up to "${longest}", longer than PostgreSQL's 63 bytes: shorten ${at}.${key}`,
      );
  }
  return { slot, publication, shard: { index: shard.index, count: shard.count, slot: p.slot, publication: p.publication } };
}

/**
 * An identifier as SQL text: always quoted, `"` doubled. Left bare, a key word such as `user` or
 * `current_date` is read as the SQL function of that name: a value changed silently.
 */
export function quoteIdent(name: string): string {
  return `"${name.replaceAll('"', '""')}"`;
}

/** An outbox table: `name` is `schema.table` as written, for messages and metric labels; `qualified` for SQL. */
export function tableOf<C extends { created_at: string }>(at: string, name: string, { created_at, ...columns }: C) {
  const parts = name.split('.');
  if (parts.length > 2 || parts.some((p) => p === ''))
    throw new ConfigError(`${at}.name`, `must be "table" or "schema.table", got "${name}"`);
  const [schema, table] = parts.length === 2 ? (parts as [string, string]) : ['public', parts[0] as string];
  return {
    schema,
    table,
    name: `${schema}.${table}`,
    qualified: `${quoteIdent(schema)}.${quoteIdent(table)}`,
    columns,
    createdAt: created_at,
  };
}

/** outbox.tables: each table once, and something to relay. */
export function checkTables(tables: ReadonlyArray<{ qualified: string; name: string }>, messages: boolean): void {
  const seen = new Set<string>();
  tables.forEach((t, i) => {
    if (seen.has(t.qualified)) throw new ConfigError(`outbox.tables[${i}].name`, `table ${t.name} is listed twice`);
    seen.add(t.qualified);
  });
  if (tables.length === 0 && !messages) {
    throw new ConfigError('outbox.tables', 'is empty and outbox.messages is disabled: nothing to relay');
  }
}

/** An HTTP header name (RFC 9110 token). */
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * telemetry.traces: the endpoint an http(s) URL, and the export headers as a record, each name
 * once; sent with every export request (authentication, mostly: their values are secrets).
 */
export function exportHeaders(endpoint: string, list: ReadonlyArray<{ name: string; value: string }>): Record<string, string> {
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    throw new ConfigError('telemetry.traces.endpoint', `is not a valid URL: "${endpoint}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError('telemetry.traces.endpoint', `must be an http:// or https:// URL, got ${url.protocol}//`);
  }
  const headers: Record<string, string> = {};
  const seen = new Set<string>();
  list.forEach((h, i) => {
    if (!HEADER_NAME.test(h.name)) throw new ConfigError(`telemetry.traces.headers[${i}].name`, `"${h.name}" is not an HTTP header name`);
    if (seen.has(h.name.toLowerCase())) throw new ConfigError(`telemetry.traces.headers[${i}].name`, `header ${h.name} is listed twice`);
    if (/[\r\n]/.test(h.value)) throw new ConfigError(`telemetry.traces.headers[${i}].value`, 'must not contain a line break');
    seen.add(h.name.toLowerCase());
    headers[h.name] = h.value;
  });
  return headers;
}

/**
 * sink.rabbitmq.url: an amqp:// or amqps:// URL, with the password (`password` or
 * `passwordFile`) put in it. EXTERNAL logs in as the client certificate's identity: it needs
 * amqps://, the certificate and key, and no password.
 */
export function amqpUrl(
  at: string,
  url: string,
  password: string | undefined,
  authMechanism: 'plain' | 'external',
  tls: { cert: string | undefined; key: string | undefined } | undefined,
  written: { password?: string | undefined; passwordFile?: string | undefined },
): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new ConfigError(`${at}.url`, 'is not a valid URL');
  }
  if (parsed.protocol !== 'amqp:' && parsed.protocol !== 'amqps:') {
    throw new ConfigError(`${at}.url`, `must be an amqp:// or amqps:// URL, got ${parsed.protocol}//`);
  }
  if (authMechanism === 'external') {
    if (parsed.protocol !== 'amqps:') throw new ConfigError(`${at}.url`, 'must be amqps:// with authMechanism external');
    if (tls?.cert === undefined || tls.key === undefined) {
      throw new ConfigError(`${at}.tls`, 'needs certFile and keyFile with authMechanism external (the certificate is the login)');
    }
    if (password !== undefined || parsed.password !== '') {
      const key = written.password !== undefined ? 'password' : written.passwordFile !== undefined ? 'passwordFile' : 'url';
      throw new ConfigError(`${at}.${key}`, 'a password is not used with authMechanism external; remove it');
    }
  }
  if (password === undefined) return url;
  parsed.password = encodeURIComponent(password);
  return parsed.toString();
}
