import { execFile, execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { readdirSync } from 'node:fs';
import { kafkaLibs } from '../harness/kafka.js';
import { type KafkaCluster, startKafkaCluster } from '../harness/kafka-cluster.js';
import { type OutboxRow, ROOT, type RelayProcess, until, writeOutbox } from '../integration/support.js';
import { type Bundle, bundle, orderAndDuplicates, waitDelivered } from './fixtures.js';

/**
 * The exactly-once relay remembers its transaction coordinator (src/sink/kafka/kafkajs-coordinator.ts,
 * docs/adr/0018-transaction-coordinator-cache.md). Here the coordinator moves under it, on three
 * KRaft brokers on loopback (every topic on 3 replicas, min.insync.replicas 2): its broker is
 * stopped mid-stream, the leadership of `__transaction_state` (one partition: its leader
 * coordinates every transactional id) passes to another, and the relay must follow it while the
 * old one is still down, never stuck asking a broker that is gone. A plain read_committed
 * consumer must see every row once, in per-key order.
 */

const TXN_STATE = '__transaction_state';

/** The broker that coordinates every transactional id now. */
const coordinatorOf = (k: KafkaCluster) => k.leaderOf(TXN_STATE, 0);

/**
 * Every record of `topics` as librdkafka reads it read_committed (test/integration/librdkafka-read.py),
 * a client independent of kafkajs: the row id header, where it sits.
 */
async function readWithLibrdkafka(brokers: string[], topics: string[], count: number): Promise<Array<{ id: string; at: string }>> {
  const python = execFileSync('bash', [join(ROOT, 'scripts/install-confluent-kafka.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
    .trim()
    .split('\n')
    .pop() as string;
  const { stdout } = await promisify(execFile)(
    python,
    [join(ROOT, 'test/integration/librdkafka-read.py'), brokers.join(','), String(count), '90', ...topics],
    { maxBuffer: 256 << 20, timeout: 120_000 },
  );
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      const r = JSON.parse(l) as { topic: string; partition: number; offset: number; headers: Array<[string, string | null]> };
      const id = r.headers.find(([k]) => k === 'id')?.[1];
      return { id: id ? Buffer.from(id, 'base64').toString() : '', at: `${r.topic}/${r.partition}@${r.offset}` };
    });
}

/** Ids read at more than one place, with the places. */
function twice(records: ReadonlyArray<{ id: string; at: string }>): Array<[string, string[]]> {
  const where = new Map<string, string[]>();
  for (const r of records) where.set(r.id, [...(where.get(r.id) ?? []), r.at]);
  return [...where].filter(([, at]) => at.length > 1);
}

/**
 * For a failure's message: the record batches (DumpLogSegments, batch headers: producer id and
 * epoch, base sequence, control or not) of node 1's copy of `at`'s partition near its offsets.
 */
async function batchesNear(k: KafkaCluster, places: string[]): Promise<string> {
  const [partition, ...offsets] = [places[0]?.split('@')[0] as string, ...places.map((a) => Number(a.split('@')[1]))];
  const dir = join(k.node(1).dataDir, partition.replace(/\/(\d+)$/, '-$1'));
  const files = readdirSync(dir)
    .filter((f) => f.endsWith('.log'))
    .map((f) => join(dir, f));
  const java = process.env.JAVA_HOME ? join(process.env.JAVA_HOME, 'bin/java') : 'java';
  const { stdout } = await promisify(execFile)(
    java,
    ['-Xmx256m', '-cp', `${await kafkaLibs()}/*`, 'kafka.tools.DumpLogSegments', '--files', files.join(',')],
    {
      maxBuffer: 64 << 20,
    },
  );
  const lo = Math.min(...offsets) - 4;
  const hi = Math.max(...offsets) + 4;
  return stdout
    .split('\n')
    .filter((l) => {
      const m = /^baseOffset: (\d+) lastOffset: (\d+)/.exec(l);
      return m !== null && Number(m[2]) >= lo && Number(m[1]) <= hi;
    })
    .map((l) => l.replace(/ (CreateTime|size|magic|crc|isvalid|position|partitionLeaderEpoch|deleteHorizonMs|compresscodec): \S+/g, ''))
    .join('\n');
}

const committed = (relay: RelayProcess) => relay.metric('outboxd_kafka_transactions_total', { result: 'committed' });

type Mode = 'exactly-once' | 'at-least-once';
/** What grows as the relay publishes: transactions committed, or messages published. */
const progressOf = (mode: Mode) => (relay: RelayProcess) =>
  mode === 'exactly-once' ? committed(relay) : relay.metric('outboxd_messages_published_total');

/** Writes rows under their own key prefix (order is checked per write), and waits until they are all read. */
async function writeAndSee(b: Bundle, relay: RelayProcess, prefix: string, total: number, seen: OutboxRow[]): Promise<OutboxRow[]> {
  const rows = await writeOutbox(b.db.client, { total, keys: 50, types: b.types, batch: 50, singles: 20, keyPrefix: prefix });
  seen.push(...rows);
  try {
    await waitDelivered(
      b.reader,
      seen.map((r) => r.id),
      120_000,
    );
  } catch (err) {
    const ids = new Set(b.reader.delivered().map((d) => d.id));
    const missing = seen.filter((r) => !ids.has(r.id));
    const state = await relay.http('/readyz').catch((e: Error) => ({ body: e.message }));
    const log = relay.stderr
      .split('\n')
      .filter((l) => !l.includes('"module":"kafkajs"'))
      .slice(-12)
      .join('\n');
    throw new Error(
      `${(err as Error).message} after "${prefix}": ${missing.length} missing (first ${missing[0]?.aggregateid}); committed ${await committed(relay).catch(() => -1)}; /readyz ${state.body.trim()}; relay log:\n${log}`,
    );
  }
  return rows;
}

/**
 * Stops the coordinator's broker (`how`), checks that the coordination moved, writes rows and
 * sees them all while that broker is down (the relay followed the coordinator), then starts it
 * again. Resolves with the nodes that coordinated before and while it was down.
 */
async function moveCoordinator(k: KafkaCluster, b: Bundle, relay: RelayProcess, how: 'graceful' | 'kill', seen: OutboxRow[], mode: Mode) {
  const progress = progressOf(mode);
  const from = await coordinatorOf(k);
  const before = await progress(relay);
  await k.node(from).stop(how);
  let to = from;
  await until(
    `${TXN_STATE} led by another broker than ${from}`,
    async () => {
      to = await coordinatorOf(k).catch(() => from);
      return to !== from;
    },
    30_000,
    100,
  );
  await writeAndSee(b, relay, `${how}-down-`, 3_000, seen);
  expect(await progress(relay)).toBeGreaterThan(before);
  await k.node(from).start();
  return { from, to };
}

/**
 * Three brokers cost 20 to 55 s a mode. It found records committed twice when kafkajs retried a
 * send with a request still in flight (4 of 10 runs failed before a first fix), and later, about
 * one run in twenty, 305 records committed twice in one transaction when partition leadership
 * moved between a send's attempts: kafkajs's sendMessages tracked answers per broker, so it sent
 * again a partition that had moved from a broker that answered, and would drop one that moved to
 * such a broker (src/sink/kafka/kafkajs-send.ts replaces it; docs/adr/0024, and
 * test/unit/kafkajs-send.test.ts shows both cases against kafkajs's own). The drop would lose
 * records at least once too, so both modes run here: exactly-once must see every row once,
 * at-least-once every row, in per-key order. Once, too, rows did not arrive within 2 minutes after
 * the first broker came back, cause not established; it runs in every suite, so that a stall,
 * should it come back, is seen. docs/adr/0018-transaction-coordinator-cache.md.
 */

describe('kafka, three brokers', () => {
  for (const mode of ['exactly-once', 'at-least-once'] as const) {
    it(mode === 'exactly-once'
      ? 'exactly-once: the transaction coordinator moves mid-stream (its broker stopped, then killed): followed while it is down; every row once'
      : "at-least-once: the brokers stop and are killed mid-stream as the coordinator's did: every row, in per-key order", async () => {
      const eos = mode === 'exactly-once';
      await using k = await startKafkaCluster({ nodes: 3 });
      await using b = await bundle({ kind: 'kafka', exactlyOnce: eos, kafkaBrokers: k.brokers.join(','), replicationFactor: 3 });
      const relay = b.start();
      await relay.ready();
      const seen: OutboxRow[] = [];
      // Rows in flight when the first coordinator stops: written, not yet all read.
      const streaming = writeOutbox(b.db.client, { total: 5_000, keys: 50, types: b.types, batch: 50, singles: 20, keyPrefix: 'first-' });
      await until('publishing', async () => (await progressOf(mode)(relay)) > (eos ? 3 : 150), 60_000, 50);
      const graceful = await moveCoordinator(k, b, relay, 'graceful', seen, mode);
      seen.push(...(await streaming));
      await writeAndSee(b, relay, 'back-', 1_000, seen);
      const killed = await moveCoordinator(k, b, relay, 'kill', seen, mode);
      await writeAndSee(b, relay, 'end-', 1_000, seen);
      await b.reader.caughtUp();
      // The reader is a consumer group member: when its group coordinator's broker stops it may
      // read a stretch of a partition again (its offsets were not committed yet). A record read
      // twice at one offset is that; the relay's duplicate is the same row at two offsets.
      const read = b.reader.delivered();
      const atOffset = new Map(read.map((d) => [`${d.stream}@${d.position}`, d]));
      const all = [...atOffset.values()];
      const rereads = read.length - all.length;
      const { violations, duplicates } = orderAndDuplicates(all);
      const ids = new Set(all.map((d) => d.id));
      const lost = seen.filter((r) => !ids.has(r.id)).length;
      const librdkafka = await readWithLibrdkafka(
        k.brokers,
        b.types.map((t) => `outbox.event.${t}`),
        seen.length,
      );
      const prefixOf = new Map(seen.map((r) => [r.id, r.aggregateid.split('key-')[0]]));
      const dups = twice(librdkafka);
      process.stdout.write(
        `[coordinator move, ${mode}] ${JSON.stringify({ graceful, killed })} rows=${seen.length} lost=${lost} duplicates=${duplicates} (reader's own re-reads: ${rereads}); librdkafka read ${librdkafka.length}, ${dups.length} twice ${JSON.stringify(dups.slice(0, 3).map(([id, at]) => [prefixOf.get(id), at]))}\n`,
      );
      if (dups.length > 0) {
        const first = dups[0] as [string, string[]];
        process.stdout.write(
          `[coordinator move] batches near ${first[1].join(', ')}:\n${await batchesNear(k, first[1]).catch((e: Error) => e.message)}\n`,
        );
      }
      expect(lost).toBe(0);
      expect(violations).toEqual([]);
      if (eos) {
        expect(dups).toEqual([]);
        expect(duplicates).toBe(0);
      }
      expect(relay.child.exitCode).toBeNull();
    }, 600_000);
  }
});
