import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError, MissingDestinationError, OutboxdError, PoisonError, SinkError } from '../../src/errors.js';
import { Health } from '../../src/observability/health.js';
import { startHttp } from '../../src/observability/http.js';
import { Liveness } from '../../src/observability/liveness.js';
import { createLogger } from '../../src/observability/logger.js';
import { createMetrics } from '../../src/observability/metrics.js';

/**
 * /readyz and /livez answer anyone who can reach the port: their bodies carry no row data (ids,
 * keys, header names, a topic rendered from a row). The log and the metrics have it.
 */
const ID = '0190c0de-poison-row-id';
const KEY = 'customer-4711';
const HEADER = 'x-tenant-private-name';
const TOPIC = 'outbox.event.tenant_acme';
const ROW_DATA = [ID, KEY, HEADER, TOPIC, 'tenant_acme'];

const cfg = parseConfig('postgres:\n  url: postgres://u@h/db\nsink:\n  type: kafka\n  kafka:\n    brokers: [k:9092]\n    workers: 0\n', {});
const livenesses: Liveness[] = [];
afterEach(() => {
  for (const l of livenesses.splice(0)) l.stop();
});

function health(): { health: Health; metrics: ReturnType<typeof createMetrics> } {
  const metrics = createMetrics();
  const liveness = new Liveness();
  livenesses.push(liveness);
  return { health: new Health(cfg.sink, metrics, liveness, (d) => d, createLogger('silent')), metrics };
}

function poison(reason: ConstructorParameters<typeof PoisonError>[0], message: string): PoisonError {
  const p = new PoisonError(reason, message);
  p.subject = { id: ID, key: KEY };
  return p;
}

const noRowData = (body: string) => {
  for (const d of ROW_DATA) expect(body).not.toContain(d);
};

describe('probe bodies', () => {
  it('a poison halt names its reason and where to look, not the row', () => {
    for (const p of [
      poison('null_key', `aggregateid (the shard key) is null for id ${ID}`),
      poison('bad_headers', `header ${HEADER} must be a string or a number, not an array`),
      poison('unroutable', `no queue is bound to exchange "e" for routing key "${TOPIC}.${KEY}"`),
    ]) {
      const { health: h } = health();
      h.setState('streaming');
      h.halted(p);
      const r = h.ready();
      expect(r.ok).toBe(false);
      expect(r.detail).toBe(
        `halted: a poison message (reason ${p.reason}); the log ("poison message: halting") has its id, key and position, outboxd_poison_messages_total{reason="${p.reason}"} counts it (docs/runbook.md#poison-messages)`,
      );
      noRowData(r.detail);
    }
  });

  it('a publish failure shows by its reason; a connect failure, which names only the config, shows whole', () => {
    const { health: h } = health();
    h.setState('streaming');
    h.sinkHealth(false, new SinkError('client_refused', `amqplib refused message ${ID}: bad header ${HEADER}`, { retriable: true }));
    expect(h.ready().detail).toBe(
      'kafka unavailable: publishing failed (reason client_refused); the log has the error, outboxd_publish_errors_total counts it',
    );
    const { health: starting } = health();
    const refused = new SinkError('ConnectionError', 'Connection error: connect ECONNREFUSED 127.0.0.1:9092', { retriable: true });
    starting.sinkHealth(false, refused, 'connect');
    expect(starting.ready().detail).toBe('starting: kafka unavailable: Connection error: connect ECONNREFUSED 127.0.0.1:9092');
    // The same error as the one the relay stops with: /livez shows it whole too.
    starting.failed(refused);
    expect(starting.live().detail).toBe('failed: Connection error: connect ECONNREFUSED 127.0.0.1:9092');
  });

  it('a missing topic is counted, not named, in the body; the metric names it', async () => {
    const { health: h, metrics } = health();
    h.setState('streaming');
    h.sinkHealth(false, new MissingDestinationError([TOPIC], `Kafka topic "${TOPIC}" does not exist`, null));
    const r = h.ready();
    expect(r.detail).toBe(
      'kafka unavailable: 1 destination that does not exist and is not created (destination_missing); the log and outboxd_destination_missing name it; publishing waits and retries',
    );
    noRowData(r.detail);
    expect(await metrics.registry.getSingleMetricAsString('outboxd_destination_missing')).toContain(`destination="${TOPIC}"`);
  });

  it('a fatal error from the data path shows in /livez by its code; one about the setup shows whole', () => {
    const { health: h } = health();
    h.failed(new OutboxdError('RECOVERY_HALTED', `lost-slot recovery stopped at poison row ${ID} of public.outbox (null_key: ...)`));
    expect(h.live()).toEqual({
      ok: false,
      detail:
        'failed: lost-slot recovery stopped at a poison row under outbox.onPoison: halt; the log has the row (docs/runbook.md#poison-messages)',
    });
    const { health: crashed } = health();
    crashed.failed(new OutboxdError('INTERNAL', `processing the replication stream: Unexpected token in "${KEY}"`));
    expect(crashed.live().detail).toBe('failed: INTERNAL: the log has the error');
    const { health: misconfigured } = health();
    misconfigured.failed(new ConfigError('outbox.tables[0].name', 'table public.outbox has no column payload'));
    expect(misconfigured.live().detail).toBe('failed: config outbox.tables[0].name: table public.outbox has no column payload');
  });

  it('/readyz, /livez and /metrics over HTTP hold no row data of a halt', async () => {
    const { health: h, metrics } = health();
    h.setState('streaming');
    h.halted(poison('null_key', `aggregateid (the shard key) is null for id ${ID}`));
    const server = await startHttp('127.0.0.1', 0, metrics.registry, h, createLogger('silent'));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const ready = await fetch(`${base}/readyz`);
      const readyBody = await ready.text();
      expect(ready.status).toBe(503);
      expect(readyBody).toMatch(/^not ok: halted: a poison message \(reason null_key\)/);
      for (const path of ['/readyz', '/livez', '/metrics']) noRowData(await (await fetch(`${base}${path}`)).text());
    } finally {
      await new Promise((r) => server.close(r));
    }
  });
});
