import { randomUUID } from 'node:crypto';
import amqp from 'amqplib';
import { describe, expect, it } from 'vitest';
import { startRabbitMQ } from '../harness/rabbitmq.js';
import { RelayProcess, TestDb, orderAndDuplicates, sleep, until, writeConfig, writeOutbox } from './support.js';
import { pgUrl, rabbitmqUrl } from '../harness/services.js';

/**
 * The relay against a real RabbitMQ node, read back with a separate AMQP connection.
 */

interface Got {
  queue: string;
  routingKey: string;
  exchange: string;
  content: string;
  properties: amqp.MessageProperties;
}

/** Binds queues and collects everything delivered to them, in delivery order per queue. */
class QueueReader {
  readonly got: Got[] = [];
  private model!: amqp.ChannelModel;
  private ch!: amqp.Channel;
  constructor(private readonly url: string) {}

  async open(): Promise<this> {
    this.model = await amqp.connect(this.url);
    this.model.on('error', () => undefined);
    this.ch = await this.model.createChannel();
    this.ch.on('error', () => undefined);
    return this;
  }

  async exchange(name: string, type: string): Promise<void> {
    await this.ch.assertExchange(name, type, { durable: true });
  }

  async bind(queue: string, exchange: string, pattern: string): Promise<void> {
    await this.ch.assertQueue(queue, { durable: true });
    await this.ch.bindQueue(queue, exchange, pattern);
  }

  async consume(queue: string): Promise<void> {
    await this.ch.consume(queue, (msg) => {
      if (!msg) return;
      this.got.push({
        queue,
        routingKey: msg.fields.routingKey,
        exchange: msg.fields.exchange,
        content: msg.content.toString(),
        properties: msg.properties,
      });
      this.ch.ack(msg);
    });
  }

  ids(): string[] {
    return this.got.map((g) => g.properties.messageId as string);
  }

  async waitForIds(ids: Iterable<string>, timeoutMs = 60_000): Promise<void> {
    const want = new Set(ids);
    await until(
      `${want.size} ids on RabbitMQ`,
      async () => {
        for (const g of this.got) want.delete(g.properties.messageId as string);
        return want.size === 0;
      },
      timeoutMs,
      200,
    );
  }

  /** Waits until the queues hold nothing more for us (every delivery made and acked). */
  async waitDrained(queues: string[], timeoutMs = 30_000): Promise<void> {
    await until(
      'the queues drained',
      async () => {
        for (const q of queues) if ((await this.ch.checkQueue(q)).messageCount > 0) return false;
        return true;
      },
      timeoutMs,
      100,
    );
  }

  async close(): Promise<void> {
    await this.model.close().catch(() => undefined);
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** Per-key order after dropping duplicates by messageId (the shared check, per queue). */
function perKeyOrder(got: Got[]): { violations: string[]; duplicates: number } {
  const { violations, duplicates } = orderAndDuplicates(
    got.map((g, position) => ({
      id: g.properties.messageId as string,
      key: String(g.properties.headers?.aggregateid),
      seq: (JSON.parse(g.content) as { seq: number }).seq,
      stream: g.queue,
      position,
    })),
  );
  return { violations, duplicates };
}

function rabbitConfig(o: { pgUrl: string; slot: string; amqpUrl: string; exchange: string; extra?: string; sinkExtra?: string }) {
  return (port: number) => `postgres:
  url: ${o.pgUrl}
  slot: ${o.slot}
  statusInterval: 1s
  heartbeat: { interval: 1s }
  reconnect: { initial: 100ms, max: 1s }
outbox:
  tables:
    - name: public.outbox
${o.extra ?? ''}
pipeline:
  retry: { initial: 100ms, max: 1s }
sink:
  type: rabbitmq
  rabbitmq:
    url: ${o.amqpUrl}
    exchange: ${o.exchange}
    declare: true
    confirmTimeout: 5s
    heartbeat: 2s
${o.sinkExtra ?? ''}
http:
  host: 127.0.0.1
  port: ${port}
`;
}

/** A database, an AMQP reader and a config for one test; `await using` cleans them all up. */
async function setup(opts: { amqpUrl?: string; extra?: string; sinkExtra?: string; exchangeType?: string } = {}) {
  const stack = new AsyncDisposableStack();
  const amqpUrl = opts.amqpUrl ?? (await rabbitmqUrl());
  const db = stack.use(await new TestDb(await pgUrl(15)).create());
  const exchange = `ex_${db.name.slice(2, 10)}`;
  const reader = stack.use(await new QueueReader(amqpUrl).open());
  await reader.exchange(exchange, opts.exchangeType ?? 'topic');
  const cfg = stack.use(
    await writeConfig(rabbitConfig({ pgUrl: db.url, slot: db.slot, amqpUrl, exchange, extra: opts.extra, sinkExtra: opts.sinkExtra })),
  );
  const start = () => stack.use(new RelayProcess(cfg.file, cfg.port));
  return { db, exchange, reader, start, tag: db.name.slice(2, 8), [Symbol.asyncDispose]: () => stack.disposeAsync() };
}

describe('Postgres → RabbitMQ', () => {
  it('delivers 10,000 rows over 200 keys to bound queues, every messageId once, per-key order kept', async () => {
    await using t = await setup();
    const { db, exchange, reader, start, tag } = t;
    const types = [`order_${tag}`, `customer_${tag}`];
    await reader.bind(`q_order_${tag}`, exchange, `order_${tag}.#`);
    await reader.bind(`q_customer_${tag}`, exchange, `customer_${tag}.*`);
    await reader.consume(`q_order_${tag}`);
    await reader.consume(`q_customer_${tag}`);
    const relay = start();
    await relay.ready();
    const rows = await writeOutbox(db.client, { total: 10_000, keys: 200, types });
    await reader.waitForIds(rows.map((r) => r.id));
    // The relay has nothing left in flight, and the queues are empty: no duplicate is on its way.
    await until('nothing in flight', async () => (await relay.metric('outboxd_inflight_messages')) === 0, 30_000);
    await reader.waitDrained([`q_order_${tag}`, `q_customer_${tag}`]);
    expect(reader.got).toHaveLength(10_000);
    const byId = new Map(rows.map((r) => [r.id, r]));
    for (const g of reader.got) {
      const row = byId.get(g.properties.messageId as string);
      expect(row).toBeDefined();
      expect(g.routingKey).toBe(`${row?.aggregatetype}.Tested`);
      expect(g.queue).toBe(`q_${row?.aggregatetype.split('_')[0]}_${tag}`);
    }
    expect(perKeyOrder(reader.got)).toEqual({ violations: [], duplicates: 0 });
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });

  it('fills the AMQP properties and headers as specified', async () => {
    await using t = await setup();
    const { db, exchange, reader, start, tag } = t;
    await reader.bind(`q_${tag}`, exchange, '#');
    await reader.consume(`q_${tag}`);
    const relay = start();
    await relay.ready();
    const id = randomUUID();
    const { rows } = await db.client.query<{ t: Date }>(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, headers, correlation_id, causation_id, reply_to, traceparent)
       VALUES ($1, 'invoice', 'inv-42', 'InvoiceIssued', '{"amount": 12.5}', '{"tenant": "acme"}', 'corr-1', 'cause-1', 'replies.invoice',
               '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')
       RETURNING now() AS t`,
      [id],
    );
    await reader.waitForIds([id]);
    const g = reader.got[0];
    const p = g?.properties;
    expect(g?.routingKey).toBe('invoice.InvoiceIssued');
    expect(g?.content).toBe('{"amount": 12.5}');
    expect(p).toMatchObject({
      messageId: id,
      correlationId: 'corr-1',
      replyTo: 'replies.invoice',
      type: 'InvoiceIssued',
      contentType: 'application/json',
      deliveryMode: 2,
      appId: 'outboxd',
    });
    expect(Math.abs(Number(p?.timestamp) - Math.floor(Number(rows[0]?.t.getTime()) / 1000))).toBeLessThanOrEqual(2);
    expect(p?.headers).toMatchObject({
      aggregatetype: 'invoice',
      aggregateid: 'inv-42',
      tenant: 'acme',
      traceparent: '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01',
      causation_id: 'cause-1',
      id,
    });
    expect(String(p?.headers?.['outboxd.lsn'])).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(Number(p?.headers?.['outboxd.xid'])).toBeGreaterThan(0);
  });

  it('shards by aggregateid over an x-consistent-hash exchange: every key on exactly one of 4 queues', async () => {
    await using t = await setup({
      exchangeType: 'x-consistent-hash',
      sinkExtra: '    exchangeType: x-consistent-hash\n',
    });
    const { db, exchange, reader, start, tag } = t;
    const queues = [0, 1, 2, 3].map((i) => `q_shard${i}_${tag}`);
    for (const q of queues) {
      await reader.bind(q, exchange, '1'); // the binding key is the weight
      await reader.consume(q);
    }
    const relay = start();
    await relay.ready();
    const rows = await writeOutbox(db.client, { total: 2_000, keys: 100, types: [`acct_${tag}`] });
    await reader.waitForIds(rows.map((r) => r.id));
    const where = new Map<string, Set<string>>();
    for (const g of reader.got) {
      const key = String(g.properties.headers?.aggregateid);
      where.set(key, (where.get(key) ?? new Set()).add(g.queue));
      expect(g.routingKey).toBe(key);
    }
    expect(where.size).toBe(100);
    expect([...where.values()].every((s) => s.size === 1)).toBe(true);
    // The hash spreads keys: every queue got some.
    expect(new Set(reader.got.map((g) => g.queue)).size).toBe(4);
    expect(perKeyOrder(reader.got).violations).toEqual([]);
  });

  it('halts on an unroutable message under halt: not ready, slot not advanced past it', async () => {
    await using t = await setup();
    const { db, exchange, reader, start, tag } = t;
    await reader.bind(`q_${tag}`, exchange, 'routed.*');
    await reader.consume(`q_${tag}`);
    const relay = start();
    await relay.ready();
    const ok = randomUUID();
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'routed', 'k', 'A', '{}')`,
      [ok],
    );
    await reader.waitForIds([ok]);
    // Everything up to here may be confirmed; the poison transaction commits after `before`.
    const before = await db.walLsn();
    await db.client.query(`INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload) VALUES ('nowhere', 'k', 'A', '{}')`);
    const after = randomUUID();
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'routed', 'k', 'B', '{}')`,
      [after],
    );
    await until('halted', async () => (await relay.http('/readyz')).body.startsWith('not ok: halted'));
    expect(await relay.metric('outboxd_poison_messages_total', { reason: 'unroutable' })).toBe(1);
    // The routing key is rendered from the row: the log has it, the unauthenticated body does not.
    expect((await relay.http('/readyz')).body).not.toContain('nowhere');
    expect(relay.stderr).toMatch(/poison message: halting/);
    await relay.heartbeatsPass(2);
    // Nothing at or after the poison message's transaction was confirmed to Postgres.
    expect((await db.slotInfo())?.confirmed).toBeLessThanOrEqual(before);
    expect(reader.ids()).toContain(ok);
    expect((await relay.http('/livez')).status).toBe(200);
  });

  it('dead-letters an unroutable message under dead-letter and goes on', async () => {
    await using t = await setup({
      extra: '  onPoison: dead-letter\n',
      sinkExtra: `    deadLetterExchange: dlx_${'x'}\n    deadLetterRoutingKey: poison\n`,
    });
    const { db, exchange, reader, start, tag } = t;
    await reader.exchange('dlx_x', 'topic');
    await reader.bind(`dlq_${tag}`, 'dlx_x', 'poison');
    await reader.bind(`q_${tag}`, exchange, 'routed.*');
    await reader.consume(`q_${tag}`);
    await reader.consume(`dlq_${tag}`);
    const relay = start();
    await relay.ready();
    const bad = randomUUID();
    const good = randomUUID();
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'nowhere', 'k', 'A', '{"x":1}')`,
      [bad],
    );
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'routed', 'k', 'B', '{}')`,
      [good],
    );
    await reader.waitForIds([bad, good]);
    const dead = reader.got.find((g) => g.properties.messageId === bad);
    expect(dead?.queue).toBe(`dlq_${tag}`);
    expect(dead?.content).toBe('{"x": 1}'); // jsonb's text form
    expect(dead?.properties.headers).toMatchObject({
      'outboxd.error_reason': 'unroutable',
      'outboxd.original_destination': 'nowhere.A',
      id: bad,
    });
    expect(String(dead?.properties.headers?.['outboxd.error'])).toMatch(/no queue is bound/);
    expect(await relay.metric('outboxd_dead_lettered_total')).toBe(1);
    expect((await relay.http('/readyz')).status).toBe(200);
  });

  it('a dead letter that is itself unroutable waits, and holds the slot, until a queue is bound for it; then it and what follows go, once each', async () => {
    const dlx = `dlx_${randomUUID().slice(0, 8)}`;
    await using t = await setup({
      extra: '  onPoison: dead-letter\n',
      sinkExtra: `    deadLetterExchange: ${dlx}\n    deadLetterRoutingKey: poison\n`,
    });
    const { db, exchange, reader, start, tag } = t;
    // The dead-letter exchange exists, with no queue bound: the dead letter comes back returned.
    await reader.exchange(dlx, 'topic');
    await reader.bind(`q_${tag}`, exchange, 'routed.*');
    await reader.consume(`q_${tag}`);
    const relay = start();
    await relay.ready();
    const first = randomUUID();
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'routed', 'k', 'A', '{"seq": 0}')`,
      [first],
    );
    await reader.waitForIds([first]);
    const before = await db.walLsn();
    const bad = randomUUID();
    const after = randomUUID();
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'nowhere', 'k', 'A', '{"seq": 1}')`,
      [bad],
    );
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'routed', 'k', 'B', '{"seq": 2}')`,
      [after],
    );
    await until('the dead letter refused as unroutable', async () =>
      // The log line is JSON: the exchange's name is in escaped quotes.
      relay.stderr.includes(`no queue is bound to dead-letter exchange \\"${dlx}\\"`),
    );
    // A row of the same key after the refusal: it waits for the poison message's batch.
    const later = randomUUID();
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'routed', 'k', 'C', '{"seq": 3}')`,
      [later],
    );
    await relay.heartbeatsPass(2);
    // Returns come after the publish: a row in the poison message's own batch may already be at
    // the broker. Nothing later went, no dead letter yet, and nothing at or after the poison
    // message's transaction was confirmed to Postgres.
    expect(reader.ids()).not.toContain(later);
    expect(reader.ids()).not.toContain(bad);
    expect((await db.slotInfo())?.confirmed).toBeLessThanOrEqual(before);
    expect(await relay.metric('outboxd_dead_lettered_total')).toBe(0);

    // A queue bound for it: the dead letter goes, then the rows after it; each once.
    await reader.bind(`dlq_${tag}`, dlx, '#');
    await reader.consume(`dlq_${tag}`);
    await reader.waitForIds([bad, after, later]);
    await reader.waitDrained([`q_${tag}`, `dlq_${tag}`]);
    expect(reader.ids().sort()).toEqual([first, bad, after, later].sort());
    const dead = reader.got.find((g) => g.properties.messageId === bad);
    expect(dead?.queue).toBe(`dlq_${tag}`);
    expect(dead?.properties.headers?.['outboxd.error_reason']).toBe('unroutable');
    expect(reader.got.filter((g) => g.queue === `q_${tag}`).map((g) => g.properties.messageId)).toEqual([first, after, later]);
    expect(await relay.metric('outboxd_dead_lettered_total')).toBe(1);
    await until('the slot past the last row', async () => ((await db.slotInfo())?.confirmed ?? 0n) > before);
  });
});

/**
 * Unroutable messages spread through a backlog, so that two batches are at the broker at once
 * (ADR 0022) with returns in both: each batch must claim its own returns (sink.ts, ChannelSet),
 * over one channel and over three (returns from any of a connection's channels).
 */
describe.each([1, 3])('Postgres → RabbitMQ, a backlog with unroutable rows among routed ones, %i channel(s)', (channels) => {
  it('dead-letters every unroutable row and only those, delivers every other once in per-key order', async () => {
    await using t = await setup({
      extra: '  onPoison: dead-letter\n',
      sinkExtra: `    channels: ${channels}\n    deadLetterExchange: dlx_many\n    deadLetterRoutingKey: poison\n`,
    });
    const { db, exchange, reader, start, tag } = t;
    // Keys cycle through the types: one key in ten has a type no queue is bound for.
    const types = [...Array.from({ length: 9 }, (_, i) => (i % 2 === 0 ? `order_${tag}` : `customer_${tag}`)), `nowhere_${tag}`];
    await reader.exchange('dlx_many', 'topic');
    await reader.bind(`dlq_${tag}`, 'dlx_many', 'poison');
    await reader.bind(`q_order_${tag}`, exchange, `order_${tag}.*`);
    await reader.bind(`q_customer_${tag}`, exchange, `customer_${tag}.*`);
    for (const q of [`q_order_${tag}`, `q_customer_${tag}`, `dlq_${tag}`]) await reader.consume(q);
    // Written while the relay is stopped (its slot made by a first start): the next start drains
    // a backlog in full batches, two at a time.
    const first = start();
    await first.ready();
    first.kill('SIGTERM');
    expect(await first.exited).toBe(0);
    const rows = await writeOutbox(db.client, { total: 6_000, keys: 100, types });
    const unroutable = new Set(rows.filter((r) => r.aggregatetype === `nowhere_${tag}`).map((r) => r.id));
    expect(unroutable.size).toBe(600);
    const relay = start();
    await relay.ready();
    await reader.waitForIds(rows.map((r) => r.id));
    await until('nothing in flight', async () => (await relay.metric('outboxd_inflight_messages')) === 0, 30_000);
    await reader.waitDrained([`q_order_${tag}`, `q_customer_${tag}`, `dlq_${tag}`]);

    const dead = reader.got.filter((g) => g.queue === `dlq_${tag}`);
    const routed = reader.got.filter((g) => g.queue !== `dlq_${tag}`);
    expect(new Set(dead.map((g) => g.properties.messageId as string))).toEqual(unroutable);
    expect(dead).toHaveLength(unroutable.size);
    for (const g of dead) expect(g.properties.headers?.['outboxd.error_reason']).toBe('unroutable');
    expect(routed).toHaveLength(rows.length - unroutable.size);
    for (const g of routed) expect(unroutable.has(g.properties.messageId as string)).toBe(false);
    expect(perKeyOrder(routed)).toEqual({ violations: [], duplicates: 0 });
    expect(await relay.metric('outboxd_dead_lettered_total')).toBe(unroutable.size);
    expect((await relay.http('/readyz')).status).toBe(200);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });
});

describe('RabbitMQ broker restart', () => {
  it('delivers every id at least once, in per-key order after dedupe, across a broker stop/start mid-stream', async () => {
    await using rabbit = await startRabbitMQ();
    await using t = await setup({ amqpUrl: rabbit.url });
    const { db, exchange, reader, start, tag } = t;
    await reader.bind(`q_${tag}`, exchange, '#');
    const relay = start();
    await relay.ready();
    let stopped = false;
    const rows = await writeOutbox(db.client, {
      total: 6_000,
      keys: 100,
      types: [`t_${tag}`],
      onProgress: (n) => {
        if (!stopped && n >= 2_000) stopped = true;
      },
    });
    // Stop the broker while the relay is (likely) still publishing, keep writing, start it again.
    await reader.close();
    await rabbit.stop();
    await until('not ready while the broker is down', async () => (await relay.http('/readyz')).status === 503, 30_000);
    const more = await writeOutbox(db.client, { total: 1_000, keys: 100, types: [`t_${tag}`] });
    await sleep(2_000); // pacing: the outage goes on while the relay retries, not a wait for anything
    await rabbit.start();
    await using again = await new QueueReader(rabbit.url).open();
    await again.consume(`q_${tag}`);
    // Sequence numbers restart in the second batch; check order within each batch separately.
    const all = [...rows, ...more];
    await again.waitForIds(
      all.map((r) => r.id),
      90_000,
    );
    await relay.ready();
    const firstIds = new Set(rows.map((r) => r.id));
    expect(perKeyOrder(again.got.filter((g) => firstIds.has(g.properties.messageId as string))).violations).toEqual([]);
    expect(perKeyOrder(again.got.filter((g) => !firstIds.has(g.properties.messageId as string))).violations).toEqual([]);
    expect(stopped).toBe(true);
  });
});
