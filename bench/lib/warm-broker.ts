import kafkajs from 'kafkajs';
import type { BrokerAdmin } from './brokers.js';
import { note } from './log.js';

/**
 * Warms the Kafka broker the bench started, before anything is measured (issue 24 measures "a
 * warm broker"): for `seconds`, idempotent producers send batches and transactional producers
 * commit small transactions over a topic and a checkpoint-like topic, so that the broker's JIT has
 * compiled its produce, transaction (AddPartitionsToTxn, EndTxn, markers) and log paths. A broker
 * just started interprets them: on the same 1M-row drain, the broker's CPU was 2.0–3.9 s for
 * at-least-once and 3.6–5.8 s for exactly-once on a fresh JVM, 1.5–2.4 and 2.2–3.1 s after this
 * minute, and 0.8 and 1.5–2.2 s on a broker that had served four minutes of drains and latency
 * runs. This goes part of the way; the JIT share the bench reports (`broker s less JIT`) covers
 * the rest. A relay's broker has been up for days; its measurement should be too.
 */
export async function warmKafka(brokers: string[], admin: BrokerAdmin, seconds: number, partitions: number): Promise<void> {
  if (seconds <= 0) return;
  const tag = Math.random().toString(16).slice(2, 8);
  const topic = `bench.warmup.${tag}`;
  const marks = `bench.warmup.${tag}.checkpoints`;
  await admin.createTopic(topic, partitions);
  await admin.createCheckpointTopic(marks);
  const kafka = new kafkajs.Kafka({ clientId: 'outboxd-bench-warmup', brokers, logLevel: kafkajs.logLevel.NOTHING });
  const until = performance.now() + seconds * 1000;
  const value = Buffer.alloc(300, 'x');
  const counts = { transactions: 0, messages: 0 };
  const batch = (n: number, from: number) =>
    Array.from({ length: n }, (_, i) => ({ key: `key-${(from + i) % 10_000}`, value, headers: { id: `${from + i}` } }));
  const transactional = async (i: number) => {
    const p = kafka.producer({ transactionalId: `bench-warmup-${tag}-${i}`, idempotent: true, maxInFlightRequests: 1 });
    await p.connect();
    try {
      for (let n = 0; performance.now() < until; n++) {
        const t = await p.transaction();
        await t.sendBatch({
          acks: -1,
          topicMessages: [
            { topic, messages: batch(20, n * 20) },
            { topic: marks, messages: [{ key: `warmup-${i}`, value: `${n}` }] },
          ],
        });
        await t.commit();
        counts.transactions++;
      }
    } finally {
      await p.disconnect();
    }
  };
  const plain = async () => {
    const p = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
    await p.connect();
    try {
      for (let n = 0; performance.now() < until; n++) {
        await p.send({ topic, acks: -1, messages: batch(500, n * 500) });
        counts.messages += 500;
      }
    } finally {
      await p.disconnect();
    }
  };
  note(`warming the Kafka broker for ${seconds} s (not measured): transactions and batches on ${topic}`);
  await Promise.all([transactional(0), transactional(1), transactional(2), plain()]);
  note(`warmed: ${counts.transactions} transactions, ${counts.messages} messages outside them`);
  await admin.deleteTopic(topic);
  await admin.deleteTopic(marks);
}
