import { type Shard, quoteIdent } from '../config/config.js';

/**
 * SHARDS (docs/adr/0020-shards.md). Shard `index` of `count` reads its own publication, whose row
 * filter keeps the outbox rows whose key hashes to `index`:
 *
 *     ((hashtext(aggregateid COLLATE "C") & 2147483647) % count) = index
 *
 * and shard 0 also takes the rows whose key is NULL (poison, reported once, by one shard).
 *
 * Why this hash: a row filter may call only built-in immutable functions, and casts through text
 * are refused, so the key column must be text or varchar. `hashtext` is PostgreSQL's
 * `hash_any` (Bob Jenkins' lookup3 over the bytes), the function behind hash indexes; its output
 * has not changed since PostgreSQL 8.4 and hash indexes survive pg_upgrade with it. `COLLATE "C"`
 * makes it hash the bytes whatever the column's collation (a nondeterministic collation would hash
 * a sort key instead). `& 2147483647` keeps the remainder non-negative without `abs`, which raises
 * "integer out of range" for -2^31 and would stop decoding.
 *
 * Logical messages cannot be row-filtered: every slot sees every one. `keyShard` computes the same
 * hash here, so each is published by the shard its key hashes to. It hashes the key's UTF-8 bytes;
 * the database must be UTF-8 (outboxd checks) and little-endian (hash_any reads words in native
 * order; every platform PostgreSQL packages for today is little-endian).
 */

const rot = (x: number, k: number) => (x << k) | (x >>> (32 - k));

/** PostgreSQL's `hashtext(key COLLATE "C")`, as the signed 32-bit integer SQL returns. */
export function hashtext(key: Buffer): number {
  let len = key.length;
  let a = (0x9e3779b9 + len + 3923095) | 0;
  let b = a;
  let c = a;
  let at = 0;
  while (len >= 12) {
    a = (a + key.readInt32LE(at)) | 0;
    b = (b + key.readInt32LE(at + 4)) | 0;
    c = (c + key.readInt32LE(at + 8)) | 0;
    // mix(a, b, c)
    a = (a - c) | 0;
    a ^= rot(c, 4);
    c = (c + b) | 0;
    b = (b - a) | 0;
    b ^= rot(a, 6);
    a = (a + c) | 0;
    c = (c - b) | 0;
    c ^= rot(b, 8);
    b = (b + a) | 0;
    a = (a - c) | 0;
    a ^= rot(c, 16);
    c = (c + b) | 0;
    b = (b - a) | 0;
    b ^= rot(a, 19);
    a = (a + c) | 0;
    c = (c - b) | 0;
    c ^= rot(b, 4);
    b = (b + a) | 0;
    at += 12;
    len -= 12;
  }
  // The last 0..11 bytes, little-endian into a, b and c; c's lowest byte is left for the length
  // (added at the start), so its bytes go in from bit 8.
  const tail = (i: number) => key[at + i] as number;
  if (len >= 9) c = (c + ((len >= 11 ? tail(10) << 24 : 0) | (len >= 10 ? tail(9) << 16 : 0) | (tail(8) << 8))) | 0;
  if (len >= 8) b = (b + key.readInt32LE(at + 4)) | 0;
  else if (len >= 5) b = (b + ((len >= 7 ? tail(6) << 16 : 0) | (len >= 6 ? tail(5) << 8 : 0) | tail(4))) | 0;
  if (len >= 4) a = (a + key.readInt32LE(at)) | 0;
  else if (len >= 1) a = (a + ((len >= 3 ? tail(2) << 16 : 0) | (len >= 2 ? tail(1) << 8 : 0) | tail(0))) | 0;
  // final(a, b, c)
  c ^= b;
  c = (c - rot(b, 14)) | 0;
  a ^= c;
  a = (a - rot(c, 11)) | 0;
  b ^= a;
  b = (b - rot(a, 25)) | 0;
  c ^= b;
  c = (c - rot(b, 16)) | 0;
  a ^= c;
  a = (a - rot(c, 4)) | 0;
  b ^= a;
  b = (b - rot(a, 14)) | 0;
  c ^= b;
  c = (c - rot(b, 24)) | 0;
  return c;
}

/** The shard a key belongs to, as the publication's row filter decides it. */
export function keyShard(key: string, count: number): number {
  return (hashtext(Buffer.from(key, 'utf8')) & 0x7fffffff) % count;
}

/** The row filter of a shard's publication over the key column `column`. */
export function shardFilter(column: string, shard: Shard): string {
  const col = quoteIdent(column);
  const hashed = `((hashtext(${col} COLLATE "C") & 2147483647) % ${shard.count}) = ${shard.index}`;
  return shard.index === 0 ? `(${hashed}) OR (${col} IS NULL)` : hashed;
}

/**
 * The filter as `pg_publication_tables.rowfilter` shows it, reduced to compare: PostgreSQL
 * deparses with its own parentheses, and a varchar column gains `::text`. Spaces and parentheses
 * are dropped from both sides, so the tokens and their order are compared.
 */
export function normalizeFilter(filter: string): string {
  return filter.replace(/::text/g, '').replace(/[()\s"]/g, '');
}

/** Whether `rowfilter` (as the server deparsed it) is the filter of `shard` over `column`. */
export function isShardFilter(rowfilter: string, column: string, shard: Shard): boolean {
  return normalizeFilter(rowfilter) === normalizeFilter(shardFilter(column, shard));
}
