import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { clearSecrets, redact, redactDeep, registerSecrets } from '../../src/redact.js';

afterEach(() => clearSecrets());

describe('redact', () => {
  it('masks URL passwords, a raw @ inside one included', () => {
    expect(redact('connecting to postgres://u:p@ss@db:5432/x failed')).toBe('connecting to postgres://u:***@db:5432/x failed');
    expect(redact('amqp://outboxd:s3cr3t@127.0.0.1:5672/%2F')).toBe('amqp://outboxd:***@127.0.0.1:5672/%2F');
    expect(redact('postgres://u@db/x (no password)')).toBe('postgres://u@db/x (no password)');
  });

  it('takes linear time on a long run of letters: a 1 MiB key in a log line once blocked the relay for minutes', () => {
    // The URL pattern started its match at every letter and ran across the rest of the run: 32 KB
    // took a second, 1 MiB would take about 17 minutes. Now well under one.
    const started = performance.now();
    for (const s of ['k'.repeat(1024 * 1024), `k://${'k'.repeat(1024 * 1024)}`, 'k1+.-'.repeat(200_000)]) redact(s);
    expect(performance.now() - started).toBeLessThan(1_000);
    expect(redact('1http://a:b@h and HTTPS://u:p@h')).toBe('1http://a:***@h and HTTPS://u:***@h');
  });

  it('masks password=… in a URL query, a key/value string and JSON', () => {
    expect(redact('postgres://u@db/x?sslmode=require&password=hunter22&x=1')).toBe('postgres://u@db/x?sslmode=require&password=***&x=1');
    expect(redact("host=db user=u password='a b' dbname=x")).toBe('host=db user=u password=*** dbname=x');
    expect(redact('{"user":"u","password":"hunter22"}')).toBe('{"user":"u","password":"***"}');
  });

  it('removes every registered secret wherever it appears, raw or URL-encoded', () => {
    registerSecrets(['Pg-S3cret/+@x', 'abc']);
    expect(redact('database "Pg-S3cret/+@x" does not exist')).toBe('database "***" does not exist');
    expect(redact(`vhost ${encodeURIComponent('Pg-S3cret/+@x')}`)).toBe('vhost ***');
    // Values shorter than 4 characters are not registered: they would redact ordinary words.
    expect(redact('abc')).toBe('abc');
  });

  it('registers the secrets of a loaded config', () => {
    parseConfig(
      'postgres:\n  url: postgres://u:pg-pass-1@db/x\nsink:\n  type: rabbitmq\n  rabbitmq:\n    url: amqp://u:amqp-pass-2@mq/v\n    exchange: e\n',
      {},
    );
    expect(redact('x pg-pass-1 y amqp-pass-2 z')).toBe('x *** y *** z');
  });

  it('walks plain objects and arrays, and leaves errors to the logger', () => {
    registerSecrets(['top-secret']);
    const err = new Error('top-secret');
    const out = redactDeep({ a: ['top-secret', 1], b: { c: 'x top-secret' }, err }) as Record<string, unknown>;
    expect(out).toEqual({ a: ['***', 1], b: { c: 'x ***' }, err });
  });
});
