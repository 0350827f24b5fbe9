import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { quoteIdent } from '../../src/config/config.js';
import { loadConfigFile, parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';

const env = {
  PGPASSWORD: 'pw',
  OUTBOXD_PG_URL: 'postgres://outboxd@db:5432/app',
};

function errorOf(yaml: string, e: NodeJS.ProcessEnv = {}): ConfigError {
  try {
    parseConfig(yaml, e);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const ce = err as ConfigError;
    expect(ce.message).not.toContain('\n');
    return ce;
  }
  throw new Error('expected a ConfigError');
}

const base = 'postgres:\n  url: postgres://u@h/db\n';

describe('config examples', () => {
  const dir = join(import.meta.dirname, '../../config');
  const files = readdirSync(dir).filter((f) => f.endsWith('.yaml'));

  it('has an example for each sink', () => {
    expect(files).toEqual(expect.arrayContaining(['kafka.yaml', 'rabbitmq.yaml', 'stdout.yaml']));
  });

  for (const file of files) {
    it(`loads config/${file}`, () => {
      // The examples name secret files that only exist in a deployment; point them at this file.
      const text = loadConfigFileWithSecrets(join(dir, file));
      expect(text.postgres.slot).toMatch(/^[a-z_]/);
    });
  }
});

function loadConfigFileWithSecrets(file: string) {
  try {
    return loadConfigFile(file, env);
  } catch (err) {
    // Secret and TLS files referenced by the example do not exist here; that error names the path.
    if (err instanceof ConfigError && /cannot read \/(run|etc)\//.test(err.message)) {
      const text = readFileSync(file, 'utf8').replace(/\/(run\/secrets|etc\/outboxd\/tls)\/[\w.-]+/g, file);
      return parseConfig(text, env);
    }
    throw err;
  }
}

describe('config defaults', () => {
  it('follows the Debezium outbox event router conventions', () => {
    const cfg = parseConfig(base, {});
    expect(cfg.outbox.tables).toHaveLength(1);
    expect(cfg.outbox.tables[0]?.qualified).toBe('"public"."outbox"');
    expect(cfg.outbox.tables[0]?.name).toBe('public.outbox');
    expect(cfg.outbox.tables[0]?.columns).toMatchObject({
      id: 'id',
      aggregatetype: 'aggregatetype',
      aggregateid: 'aggregateid',
      payload: 'payload',
    });
    expect(cfg.sink.type).toBe('stdout');
    expect(cfg.outbox.onPoison).toBe('halt');
    expect(cfg.postgres.slot).toBe('outboxd');
  });

  it('compiles durations and sizes to numbers', () => {
    const cfg = parseConfig(`${base}pipeline:\n  linger: 20ms\n  maxInFlightBytes: 8MiB\nshutdown:\n  grace: 1m\n`, {});
    expect(cfg.pipeline.lingerMs).toBe(20);
    expect(cfg.pipeline.maxInFlightBytes).toBe(8 * 1024 * 1024);
    expect(cfg.shutdown.graceMs).toBe(60_000);
  });

  it('reads Kafka brokers from a list or a comma-separated env var', () => {
    const cfg = parseConfig(`${base}sink:\n  type: kafka\n  kafka:\n    brokers: \${BROKERS}\n`, { BROKERS: 'a:9092, b:9092' });
    expect(cfg.sink.type === 'kafka' && cfg.sink.kafka.brokers).toEqual(['a:9092', 'b:9092']);
  });
});

describe('identifiers in SQL', () => {
  it('quotes every identifier, so a key word names the column and not the SQL function', () => {
    for (const word of ['user', 'current_date', 'current_user', 'session_user', 'current_timestamp', 'order', 'outbox', 'created_at'])
      expect(quoteIdent(word)).toBe(`"${word}"`);
    expect(quoteIdent('Mixed Case')).toBe('"Mixed Case"');
    expect(quoteIdent('a"b""c')).toBe('"a""b""""c"');
  });

  it('names a table for SQL quoted, and as written for messages and labels', () => {
    const cfg = parseConfig(`${base}outbox:\n  tables:\n    - name: Order.user\n    - name: current_date\n`, {});
    expect(cfg.outbox.tables.map((t) => [t.qualified, t.name])).toEqual([
      ['"Order"."user"', 'Order.user'],
      ['"public"."current_date"', 'public.current_date'],
    ]);
  });
});

describe('rabbitmq config', () => {
  const rabbit = (extra: string) =>
    parseConfig(`${base}sink:\n  type: rabbitmq\n  rabbitmq:\n    url: amqp://u@h/%2F\n    exchange: ev\n${extra}`, {});

  it('defaults the routing key to {aggregatetype}.{type}, or {aggregateid} for x-consistent-hash', () => {
    const topic = rabbit('');
    expect(topic.sink.type === 'rabbitmq' && topic.sink.rabbitmq.routingKey.source).toBe('{aggregatetype}.{type}');
    const hash = rabbit('    exchangeType: x-consistent-hash\n');
    expect(hash.sink.type === 'rabbitmq' && hash.sink.rabbitmq.routingKey.source).toBe('{aggregateid}');
  });

  it('puts a configured password into the URL', () => {
    const cfg = rabbit('    password: p@ss\n');
    expect(cfg.sink.type === 'rabbitmq' && cfg.sink.rabbitmq.url).toBe('amqp://u:p%40ss@h/%2F');
  });

  it('rejects a non-AMQP URL and a missing exchange', () => {
    expect(errorOf(`${base}sink:\n  type: rabbitmq\n  rabbitmq:\n    url: http://h\n    exchange: e\n`).path).toBe('sink.rabbitmq.url');
    expect(errorOf(`${base}sink:\n  type: rabbitmq\n  rabbitmq:\n    url: amqp://h\n`).path).toBe('sink.rabbitmq.exchange');
    expect(
      errorOf(`${base}sink:\n  type: rabbitmq\n  rabbitmq:\n    url: amqp://h\n    exchange: e\n    exchangeType: headers\n`).path,
    ).toBe('sink.rabbitmq.exchangeType');
  });
});

describe('config interpolation', () => {
  it('expands ${VAR}, ${VAR:-default} and escapes $${', () => {
    const cfg = parseConfig(
      'postgres:\n  url: postgres://u@${H}:${P:-5432}/db\n  slot: s_${S:-x}\nsink:\n  stdout:\n    destination: "$${a}{aggregatetype}"\n',
      { H: 'db' },
    );
    expect(cfg.postgres.url).toBe('postgres://u@db:5432/db');
    expect(cfg.postgres.slot).toBe('s_x');
  });

  it('names the path and the message of ${VAR:?message}', () => {
    const e = errorOf('postgres:\n  url: ${PG_URL:?the database URL}\n');
    expect(e.path).toBe('postgres.url');
    expect(e.message).toBe('config postgres.url: environment variable PG_URL is not set: the database URL');
  });

  it('fails on an unset ${VAR} without default', () => {
    expect(errorOf(`${base}http:\n  port: \${PORT}\n`).path).toBe('http.port');
  });

  it('coerces interpolated numbers', () => {
    expect(parseConfig(`${base}http:\n  port: \${PORT}\n`, { PORT: '9999' }).http.port).toBe(9999);
  });
});

describe('config errors name the YAML path', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['postgres:\n  url: postgres://u@h/db\n  slott: x\n', 'postgres.slott', /unknown key \(did you mean "slot"\?\)/],
    ['{}', 'postgres', /is required/],
    ['postgres:\n  url: mysql://x\n', 'postgres.url', /postgres:\/\//],
    [`${base}  slot: Bad-Name\n`, 'postgres.slot', /lower-case identifier/],
    [`${base}sink:\n  type: kafkaa\n`, 'sink.type', /one of kafka, rabbitmq, stdout/],
    [`${base}sink:\n  type: kafka\n`, 'sink.kafka.brokers', /is required/],
    [`${base}sink:\n  type: kafka\n  kafka:\n    brokers: [nohost]\n`, 'sink.kafka.brokers[0]', /host:port/],
    [`${base}pipeline:\n  linger: 5\n`, 'pipeline.linger', /duration/],
    [`${base}pipeline:\n  maxInFlightBytes: lots\n`, 'pipeline.maxInFlightBytes', /size/],
    [`${base}pipeline:\n  batchMaxMessages: 0\n`, 'pipeline.batchMaxMessages', /at least 1/],
    [`${base}http:\n  port: 70000\n`, 'http.port', /at most 65535/],
    [`${base}outbox:\n  tables:\n    - name: a.b.c\n`, 'outbox.tables[0].name', /schema.table/],
    [`${base}outbox:\n  tables:\n    - name: t\n      columns:\n        idd: x\n`, 'outbox.tables[0].columns.idd', /unknown key/],
    [`${base}outbox:\n  onPoison: ignore\n`, 'outbox.onPoison', /halt, dead-letter/],
    [`${base}sink:\n  type: stdout\n  kafka:\n    brokers: [a:1]\n`, 'sink.kafka', /sink.type is stdout/],
    [
      `${base}sink:\n  type: kafka\n  kafka:\n    brokers: [a:1]\n    sasl:\n      mechanism: md5\n      username: u\n      password: p\n`,
      'sink.kafka.sasl.mechanism',
      /plain/,
    ],
    [`${base}log:\n  level: loud\n`, 'log.level', /one of/],
    ['postgres: [1, 2]\n', 'postgres', /must be a mapping/],
  ];
  for (const [yaml, path, message] of cases) {
    it(`${path}: ${message.source}`, () => {
      const e = errorOf(yaml);
      expect(e.path).toBe(path);
      expect(e.message).toMatch(message);
      expect(e.message.startsWith(`config ${path}: `)).toBe(true);
    });
  }

  it('reports YAML syntax errors with a line number', () => {
    const e = errorOf('postgres:\n  url: [unclosed\n');
    expect(e.message).toMatch(/YAML syntax error at line \d+/);
  });
});

describe('config as a YAML 1.1 reader (Helm) hands it over', () => {
  it('takes false for off in an enum that has off, and true for on nowhere else', () => {
    const cfg = parseConfig(`${base}outbox:\n  prune:\n    mode: false\nsink:\n  cloudevents:\n    mode: false\n`);
    expect(cfg.outbox.prune.mode).toBe('off');
    expect(cfg.sink.cloudevents.mode).toBe('off');
    const e = errorOf(`${base}outbox:\n  prune:\n    mode: true\n`);
    expect(e.message).toBe(
      'config outbox.prune.mode: must be one of off, delete, partitions, got the boolean true (YAML 1.1 reads a bare on as true; quote it)',
    );
  });

  it('names the type of a boolean given where text is wanted', () => {
    const cases: Array<[string, string]> = [
      [
        `${base}outbox:\n  onPoison: false\n`,
        'config outbox.onPoison: must be one of halt, dead-letter, got the boolean false (YAML 1.1 reads a bare off as false; quote it)',
      ],
      [
        `${base}  heartbeat:\n    prefix: true\n`,
        'config postgres.heartbeat.prefix: must be a string, got the boolean true (YAML 1.1 reads a bare on as true; quote it)',
      ],
      [
        `${base}pipeline:\n  linger: false\n`,
        'config pipeline.linger: must be a duration like 500ms, 10s or 5m, got the boolean false (YAML 1.1 reads a bare off as false; quote it)',
      ],
      [
        `${base}sink:\n  type: kafka\n  kafka:\n    brokers: [a:1]\n    maxMessageBytes: false\n`,
        'config sink.kafka.maxMessageBytes: must be a size like 64MiB, 1MB or 4096, got the boolean false (YAML 1.1 reads a bare off as false; quote it)',
      ],
    ];
    for (const [yaml, message] of cases) expect(errorOf(yaml).message).toBe(message);
  });

  it('compiles every config/ example read as YAML 1.1 as it compiles read as YAML 1.2', () => {
    const dir = join(import.meta.dirname, '../../config');
    let booleans = 0;
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.yaml'))) {
      const text = readFileSync(join(dir, file), 'utf8').replace(/\/(run\/secrets|etc\/outboxd\/tls)\/[\w.-]+/g, join(dir, file));
      // What Helm's toYaml writes: the values as YAML 1.1 read them (mode: off became mode: false).
      const as11 = stringify(parse(text, { version: '1.1' }));
      if (/mode: false/.test(as11)) booleans++;
      expect(parseConfig(as11, env), file).toEqual(parseConfig(text, env));
    }
    expect(booleans, 'an example writes a bare off').toBeGreaterThan(0);
  });
});
