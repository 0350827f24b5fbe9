import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { kafkaBrokers } from '../harness/services.js';
import { ROOT } from './support.js';

/**
 * The requests a transactional producer sends per transaction, counted with kafkajs's REQUEST
 * instrumentation events, with kafkajs's own eosManager and with outboxd's door (which remembers
 * the coordinator: src/sink/kafka/kafkajs-coordinator.ts, docs/adr/0018-transaction-coordinator-cache.md).
 * Each runs in a process of its own (kafkajs loads once per process, and the door must come
 * first), from dist/: `npm run -s build` first.
 */
const TRANSACTIONS = 50;

/** The script: `door` = load kafkajs through dist/'s door, else plain. Prints requests by API name. */
const script = (door: boolean, brokers: string[], topic: string) => `
import { createRequire } from 'node:module';
const require = createRequire(${JSON.stringify(join(ROOT, 'package.json'))});
const kafkajs = ${door ? `(await import(${JSON.stringify(join(ROOT, 'dist/sink/kafka/kafkajs-internals.js'))})).installKafkajs()` : `require('kafkajs')`};
const kafka = new kafkajs.Kafka({ clientId: 'coordinator-count', brokers: ${JSON.stringify(brokers)}, logLevel: kafkajs.logLevel.NOTHING });
const admin = kafka.admin();
await admin.connect();
await admin.createTopics({ topics: [{ topic: ${JSON.stringify(topic)}, numPartitions: 3, replicationFactor: 1 }], waitForLeaders: true });
await admin.disconnect();
const producer = kafka.producer({ transactionalId: ${JSON.stringify(`${topic}-tx`)}, idempotent: true, maxInFlightRequests: 1,
  retry: { retries: 12, initialRetryTime: 2, multiplier: 1.5, maxRetryTime: 2000 } });
await producer.connect();
const counts = {};
let started = 0;
let counting = false;
producer.on(producer.events.REQUEST, ({ payload }) => { if (counting) counts[payload.apiName] = (counts[payload.apiName] ?? 0) + 1; });
// The first transaction (InitProducerId, metadata) is not counted: the steady state is.
for (let i = 0; i <= ${TRANSACTIONS}; i++) {
  counting = i > 0;
  if (i === 1) started = performance.now();
  const txn = await producer.transaction();
  await txn.sendBatch({ acks: -1, topicMessages: [{ topic: ${JSON.stringify(topic)}, messages: [0, 1, 2].map((p) => ({ key: String(i), value: 'x', partition: p })) }] });
  await txn.commit();
}
counts.ms = performance.now() - started;
await producer.disconnect();
process.stdout.write(JSON.stringify(counts));
`;

function requestsPerTransaction(door: boolean, brokers: string[]): Record<string, number> {
  const topic = `coordinator_${door ? 'door' : 'plain'}_${process.pid}`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script(door, brokers, topic)], {
    encoding: 'utf8',
    timeout: 120_000,
  });
  if (r.status !== 0) throw new Error(`the counting script failed (${r.status}): ${r.stderr}`);
  const counts = JSON.parse(r.stdout) as Record<string, number>;
  return Object.fromEntries(Object.entries(counts).map(([api, n]) => [api, n / TRANSACTIONS]));
}

describe('the transaction coordinator, remembered', () => {
  it('costs no FindCoordinator per transaction, where kafkajs alone asks for one before each AddPartitionsToTxn and EndTxn', async () => {
    const brokers = await kafkaBrokers();
    const plain = requestsPerTransaction(false, brokers);
    const door = requestsPerTransaction(true, brokers);
    process.stdout.write(`[coordinator] requests per transaction: kafkajs ${JSON.stringify(plain)}; door ${JSON.stringify(door)}\n`);
    expect(plain.GroupCoordinator ?? 0).toBeGreaterThanOrEqual(2);
    expect(door.GroupCoordinator ?? 0).toBe(0);
    // The same transactions otherwise: an AddPartitionsToTxn (asked again while the coordinator
    // still writes the last one's markers) and an EndTxn each, with no Metadata request for a
    // CONCURRENT_TRANSACTIONS (kafkajs's own retry sends one).
    expect(door.EndTxn).toBe(1);
    expect(door.AddPartitionsToTxn).toBeGreaterThanOrEqual(1);
    expect(door.Metadata ?? 0).toBeLessThan(0.2);
  });
});
