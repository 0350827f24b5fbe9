import { describe, expect, it } from 'vitest';
import { allShards, shardConfig } from '../../src/config/config.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { ownsMessage } from '../../src/pipeline/ingest.js';
import { hashtext, isShardFilter, keyShard, shardFilter } from '../../src/postgres/shard.js';

/**
 * Shards (docs/adr/0020-shards.md): PostgreSQL's hashtext computed here, the row filter each
 * shard's publication carries, and the names and ids each shard derives. The hash is compared with
 * the server's on thousands of keys in test/integration/shards.test.ts; these are the values
 * PostgreSQL 15 returned for `SELECT hashtext(k COLLATE "C")`.
 */

const SERVER: ReadonlyArray<[string, number]> = [
  ['abc', -785388649],
  ['', -1477818771],
  ['\u00e9t\u00e9', 1868829380],
  ['a much longer key that spans several twelve byte blocks!!', 1784184857],
];

const base = (extra = '') =>
  `postgres:\n  url: postgres://u@h/db\n  slot: orders\n  publication: orders_pub\n${extra}sink:\n  type: kafka\n  kafka:\n    brokers: k:9092\n    delivery: exactly-once\n`;

describe('hashtext, as PostgreSQL computes it', () => {
  it.each(SERVER)('hashtext(%j) is %i', (key, want) => {
    expect(hashtext(Buffer.from(key, 'utf8'))).toBe(want);
  });

  it('spreads keys evenly over the shards, each key in exactly one', () => {
    const counts = [0, 0, 0];
    for (let i = 0; i < 30_000; i++) counts[keyShard(`order-${i}`, 3)]! += 1;
    for (const n of counts) expect(Math.abs(n - 10_000)).toBeLessThan(500);
    expect(keyShard('order-1', 1)).toBe(0);
  });
});

describe('the row filter of a shard', () => {
  it('hashes the key as bytes (COLLATE "C"), keeps it non-negative without abs, and gives NULL keys to shard 0', () => {
    expect(shardFilter('aggregateid', { index: 1, count: 3 })).toBe('((hashtext("aggregateid" COLLATE "C") & 2147483647) % 3) = 1');
    expect(shardFilter('aggregateid', { index: 0, count: 3 })).toBe(
      '(((hashtext("aggregateid" COLLATE "C") & 2147483647) % 3) = 0) OR ("aggregateid" IS NULL)',
    );
  });

  it('recognises the filter as the server deparses it, and nothing else', () => {
    const one = { index: 1, count: 3 };
    expect(isShardFilter('(((hashtext((aggregateid COLLATE "C")) & 2147483647) % 3) = 1)', 'aggregateid', one)).toBe(true);
    expect(isShardFilter('(((hashtext(((k)::text COLLATE "C")) & 2147483647) % 3) = 1)', 'k', one)).toBe(true);
    expect(
      isShardFilter('((((hashtext((aggregateid COLLATE "C")) & 2147483647) % 3) = 0) OR (aggregateid IS NULL))', 'aggregateid', {
        index: 0,
        count: 3,
      }),
    ).toBe(true);
    // Another shard's, another count's, a filter without the NULL keys, another column's.
    expect(isShardFilter('(((hashtext((aggregateid COLLATE "C")) & 2147483647) % 3) = 2)', 'aggregateid', one)).toBe(false);
    expect(isShardFilter('(((hashtext((aggregateid COLLATE "C")) & 2147483647) % 2) = 1)', 'aggregateid', one)).toBe(false);
    expect(isShardFilter('(((hashtext((aggregateid COLLATE "C")) & 2147483647) % 3) = 0)', 'aggregateid', { index: 0, count: 3 })).toBe(
      false,
    );
    expect(isShardFilter('(((hashtext((other COLLATE "C")) & 2147483647) % 3) = 1)', 'aggregateid', one)).toBe(false);
  });
});

describe('postgres.shard in the config', () => {
  it("derives the shard's slot, publication and transactional id from the names", () => {
    const cfg = parseConfig(base('  shard:\n    index: 2\n    count: 3\n'), {});
    expect(cfg.postgres.slot).toBe('orders_2_of_3');
    expect(cfg.postgres.publication).toBe('orders_pub_2_of_3');
    expect(cfg.postgres.shard).toEqual({ index: 2, count: 3, slot: 'orders', publication: 'orders_pub' });
    expect(cfg.sink.type === 'kafka' && cfg.sink.kafka.transactionalId).toBe('outboxd-orders_2_of_3');
    expect(allShards(cfg).map((c) => c.postgres.slot)).toEqual(['orders_0_of_3', 'orders_1_of_3', 'orders_2_of_3']);
    expect(shardConfig(cfg, 0).postgres.publication).toBe('orders_pub_0_of_3');
  });

  it('takes the index from the environment, as the chart passes the pod ordinal', () => {
    const cfg = parseConfig(base('  shard:\n    index: ${OUTBOXD_SHARD_INDEX}\n    count: 2\n'), { OUTBOXD_SHARD_INDEX: '1' });
    expect(cfg.postgres.slot).toBe('orders_1_of_2');
  });

  it('gives a set transactional id its shard, so shards never fence each other', () => {
    const cfg = parseConfig(
      base('  shard:\n    index: 1\n    count: 2\n').replace('delivery: exactly-once', 'delivery: exactly-once\n    transactionalId: tx'),
      {},
    );
    expect(cfg.sink.type === 'kafka' && cfg.sink.kafka.transactionalId).toBe('tx_1_of_2');
  });

  it('is unsharded without postgres.shard: the names as written', () => {
    const cfg = parseConfig(base(), {});
    expect([cfg.postgres.slot, cfg.postgres.publication, cfg.postgres.shard]).toEqual(['orders', 'orders_pub', undefined]);
  });

  it.each([
    ['  shard:\n    index: 3\n    count: 3\n', 'postgres.shard.index'],
    ['  shard:\n    index: 0\n    count: 0\n', 'postgres.shard.count'],
    ['  shard:\n    index: 0\n    count: 65\n', 'postgres.shard.count'],
    ['  shard:\n    index: 0\n', 'postgres.shard'],
    ['  shard:\n    index: 1\n    count: 2\n', null],
  ])('refuses a shard outside its count, naming the key (%j)', (extra, path) => {
    const parse = () => parseConfig(base(extra), {});
    if (path === null) return void expect(parse).not.toThrow();
    expect(parse).toThrow(ConfigError);
    expect(parse).toThrow(path);
  });

  it('refuses a slot name the shard suffix makes longer than PostgreSQL allows', () => {
    const long = 'x'.repeat(60);
    expect(() => parseConfig(base('  shard:\n    index: 0\n    count: 2\n').replace('slot: orders', `slot: ${long}`), {})).toThrow(
      'postgres.slot',
    );
    // Shard 0's name fits (63 bytes), shard 11's would not: every shard's must, since setup makes them all.
    const edge = base('  shard:\n    index: 0\n    count: 12\n').replace('publication: orders_pub', `publication: ${'p'.repeat(55)}`);
    expect(() => parseConfig(edge, {})).toThrow(/postgres\.publication: with 12 shards it becomes up to "p+_11_of_12"/);
  });
});

describe('logical messages, which every shard sees', () => {
  const msg = (key: unknown) => Buffer.from(JSON.stringify({ id: 'x', aggregatetype: 't', aggregateid: key, payload: {} }));

  it('are published by exactly the shard their key hashes to', () => {
    for (const key of ['a', 'order-17', '\u00e9t\u00e9', 42]) {
      const owners = [0, 1, 2].filter((index) => ownsMessage({ index, count: 3 }, msg(key)));
      expect(owners).toEqual([keyShard(String(key), 3)]);
    }
  });

  it('belong to shard 0 when they have no readable key (poison is reported once)', () => {
    for (const content of [msg(null), Buffer.from('not json'), Buffer.from([0xff, 0xfe]), null]) {
      expect([0, 1, 2].filter((index) => ownsMessage({ index, count: 3 }, content))).toEqual([0]);
    }
  });
});
