/**
 * The bare clients: the fastest this broker and client library take the same messages on this
 * machine. They read the backlog's rows from Postgres first (not timed), build every message in
 * memory, then publish them all and time that, from the first publish to the last confirm.
 *
 * - kafkajs: an idempotent producer (acks=all, maxInFlightRequests 1, the default murmur2
 *   partitioner, no compression), `sendBatch` of `batch` messages at a time, each awaited.
 * - platformatic: `@platformatic/kafka`'s Producer, idempotent (it then keeps one request in
 *   flight and acks=all), its murmur2 partitioner, no compression, `send` of `batch` messages at a
 *   time, each awaited: the same work as the kafkajs pairing, by the other pure-JS client.
 * - amqplib: a ConfirmChannel, persistent + mandatory to a durable topic exchange bound to a
 *   durable queue, at most `batch` unconfirmed messages at a time (a sliding window), waiting
 *   for 'drain' when publish() says the buffer is full. With window 'batch' (bare-amqplib-batch)
 *   it waits for every confirm of a batch of `batch` before the next, as outboxd's pipeline does.
 *
 * Headers carry what outboxd sends (id, type, outboxd.lsn, outboxd.xid; AMQP messageId, type,
 * timestamp, contentType, appId, aggregate headers), so the bytes on the wire match.
 *
 *   node bare.js '<BareParams JSON>'   (forked with an IPC channel; reports BareMessage)
 */
import amqp from 'amqplib';
import kafkajs from 'kafkajs';
import pg from 'pg';
import type { BareMessage, BareParams } from '../lib/consumers.js';
import { memory } from '../lib/procfs.js';

interface Row {
  id: string;
  aggregatetype: string;
  aggregateid: string;
  type: string;
  payload: string;
}

const send = (m: BareMessage): void => {
  process.send?.(m);
};

async function loadRows(p: BareParams): Promise<Row[]> {
  const client = new pg.Client({ connectionString: p.dbUrl });
  await client.connect();
  try {
    // Physical order is insert order for this append-only table: the WAL's order. A prefix run
    // takes the first `rows` of them.
    const { rows } = await client.query<Row>(
      `SELECT id::text, aggregatetype, aggregateid, type, payload::text FROM ${p.table} LIMIT ${Math.floor(p.rows)}`,
    );
    return rows;
  } finally {
    await client.end();
  }
}

const FAKE_LSN = '0/5A1B2C3D';
const FAKE_XID = '1234567';

async function kafka(p: BareParams, rows: Row[]): Promise<number> {
  const client = new kafkajs.Kafka({ clientId: 'bare-kafkajs', brokers: p.brokers, logLevel: kafkajs.logLevel.ERROR });
  const producer = client.producer({
    idempotent: true,
    maxInFlightRequests: 1,
    allowAutoTopicCreation: false,
    createPartitioner: kafkajs.Partitioners.DefaultPartitioner,
  });
  const messages: kafkajs.Message[] = rows.map((r) => ({
    key: Buffer.from(r.aggregateid),
    value: Buffer.from(r.payload),
    headers: { id: r.id, type: r.type, 'outboxd.lsn': FAKE_LSN, 'outboxd.xid': FAKE_XID },
  }));
  rows.length = 0;
  await producer.connect();
  // One warm-up send outside the timing would change nothing on a fresh topic; go.
  send({ type: 'start' });
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  for (let i = 0; i < messages.length; i += p.batch) {
    await producer.sendBatch({
      acks: -1,
      compression: kafkajs.CompressionTypes.None,
      topicMessages: [{ topic: p.topic, messages: messages.slice(i, i + p.batch) }],
    });
  }
  const seconds = (performance.now() - t0) / 1000;
  report(seconds, c0, messages.length);
  await producer.disconnect();
  return seconds;
}

async function platformatic(p: BareParams, rows: Row[]): Promise<number> {
  const { Producer, ProduceAcks } = await import('@platformatic/kafka');
  const producer = new Producer({
    clientId: 'bare-platformatic',
    bootstrapBrokers: p.brokers,
    idempotent: true,
    acks: ProduceAcks.ALL,
    autocreateTopics: false,
  });
  const h = (s: string): Buffer => Buffer.from(s);
  const messages = rows.map((r) => ({
    topic: p.topic,
    key: h(r.aggregateid),
    value: h(r.payload),
    headers: new Map([
      [h('id'), h(r.id)],
      [h('type'), h(r.type)],
      [h('outboxd.lsn'), h(FAKE_LSN)],
      [h('outboxd.xid'), h(FAKE_XID)],
    ]),
  }));
  rows.length = 0;
  // Connected, topic known and producer id taken before the clock starts, as kafkajs's connect().
  await producer.metadata({ topics: [p.topic] });
  await producer.initIdempotentProducer({});
  send({ type: 'start' });
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  for (let i = 0; i < messages.length; i += p.batch) {
    await producer.send({ messages: messages.slice(i, i + p.batch) });
  }
  const seconds = (performance.now() - t0) / 1000;
  report(seconds, c0, messages.length);
  await producer.close();
  return seconds;
}

async function rabbit(p: BareParams, rows: Row[]): Promise<number> {
  const conn = await amqp.connect(p.amqpUrl);
  const ch = await conn.createConfirmChannel();
  const now = Math.floor(Date.now() / 1000);
  const built = rows.map((r) => ({
    routingKey: `${r.aggregatetype}.${r.type}`,
    body: Buffer.from(r.payload),
    props: {
      persistent: true,
      mandatory: true,
      messageId: r.id,
      type: r.type,
      timestamp: now,
      contentType: 'application/json',
      appId: 'outboxd',
      headers: {
        id: r.id,
        type: r.type,
        'outboxd.lsn': FAKE_LSN,
        'outboxd.xid': FAKE_XID,
        aggregatetype: r.aggregatetype,
        aggregateid: r.aggregateid,
      },
    } satisfies amqp.Options.Publish,
  }));
  rows.length = 0;
  let returned = 0;
  ch.on('return', () => {
    returned++;
  });
  let outstanding = 0;
  let failure: Error | null = null;
  let wake: (() => void) | null = null;
  const onConfirm = (err: unknown): void => {
    outstanding--;
    if (err && !failure) failure = err instanceof Error ? err : new Error('nack');
    const w = wake;
    wake = null;
    w?.();
  };
  const waitBelow = (n: number): Promise<void> =>
    new Promise<void>((resolve) => {
      const check = (): void => {
        if (outstanding < n || failure) resolve();
        else wake = check;
      };
      check();
    });
  send({ type: 'start' });
  const t0 = performance.now();
  const c0 = process.cpuUsage();
  let inBatch = 0;
  for (const m of built) {
    if (p.window === 'batch' && inBatch === p.batch) {
      // As a relay must: a batch is confirmed whole before the next one goes.
      await waitBelow(1);
      inBatch = 0;
    }
    inBatch++;
    if (outstanding >= p.batch) await waitBelow(p.batch);
    if (failure) throw failure;
    outstanding++;
    if (!ch.publish(p.exchange, m.routingKey, m.body, m.props, onConfirm)) await new Promise((r) => ch.once('drain', r));
  }
  await waitBelow(1);
  if (failure) throw failure;
  const seconds = (performance.now() - t0) / 1000;
  if (returned > 0) throw new Error(`${returned} messages returned unroutable`);
  report(seconds, c0, built.length);
  await conn.close();
  return seconds;
}

function report(seconds: number, c0: NodeJS.CpuUsage, published: number): void {
  const c = process.cpuUsage(c0);
  send({ type: 'done', seconds, cpuSeconds: (c.user + c.system) / 1e6, published, peakMiB: memory(process.pid)?.peakMiB ?? 0 });
}

try {
  const p = JSON.parse(process.argv[2] ?? '{}') as BareParams;
  const rows = await loadRows(p);
  if (rows.length !== p.rows) throw new Error(`read ${rows.length} rows from ${p.table}, expected ${p.rows}`);
  send({ type: 'loaded', rows: rows.length });
  if (p.kind === 'kafkajs') await kafka(p, rows);
  else if (p.kind === 'platformatic') await platformatic(p, rows);
  else await rabbit(p, rows);
} catch (err) {
  send({ type: 'error', message: `bare client: ${(err as Error).stack ?? String(err)}` });
}
// Stay until the orchestrator has read the report and kills us.
process.on('disconnect', () => process.exit(0));
