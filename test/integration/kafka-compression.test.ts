import { execFile, execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import kafkajs from 'kafkajs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { installKafkajs } from '../../src/sink/kafka/kafkajs-internals.js';
import { type KafkaServer, kafkaLibs, startKafka } from '../harness/kafka.js';
import { pgUrl } from '../harness/services.js';
import { CliProcess, ROOT, RelayProcess, TestDb, until, writeConfig } from './support.js';

/**
 * sink.kafka.compression against a real broker, per codec and per path (main thread, workers,
 * exactly-once, replay; dead letters on each): an independent client, librdkafka through
 * confluent-kafka, reads every key and value back byte for byte, and Kafka's own DumpLogSegments
 * shows the broker stored the batches with that codec (docs/adr/0017).
 */
const run = promisify(execFile);

type Codec = 'none' | 'gzip' | 'snappy' | 'lz4' | 'zstd';
interface Case {
  compression: Codec;
  path: 'main thread' | 'workers' | 'exactly-once' | 'replay';
}
const CASES: Case[] = [
  ...(['none', 'gzip', 'snappy', 'lz4', 'zstd'] as const).map((compression) => ({ compression, path: 'workers' as const })),
  ...(['gzip', 'snappy', 'lz4', 'zstd'] as const).map((compression) => ({ compression, path: 'main thread' as const })),
  ...(['snappy', 'lz4', 'zstd'] as const).map((compression) => ({ compression, path: 'exactly-once' as const })),
  { compression: 'zstd', path: 'replay' },
  { compression: 'lz4', path: 'replay' },
];

const ROWS = 300;
const MAX_MESSAGE = 256 * 1024;

/** confluent-kafka's python: scripts/prereqs.sh exports it; else the install script finds or makes it. */
function confluentPython(): string {
  const fromEnv = process.env.OUTBOXD_CONFLUENT_PYTHON;
  if (fromEnv) return fromEnv;
  return execFileSync('bash', [join(ROOT, 'scripts/install-confluent-kafka.sh')], {
    encoding: 'utf8',
    stdio: ['ignore', 'pipe', 'inherit'],
  })
    .trim()
    .split('\n')
    .pop() as string;
}

interface Read {
  topic: string;
  key: Buffer | null;
  value: Buffer | null;
  headers: Array<[string, Buffer | null]>;
}

async function readWithLibrdkafka(brokers: string[], topics: string[], count: number): Promise<Read[]> {
  const { stdout } = await run(
    confluentPython(),
    [join(ROOT, 'test/integration/librdkafka-read.py'), brokers.join(','), String(count), '90', ...topics],
    { maxBuffer: 256 << 20, timeout: 120_000 },
  );
  const b = (s: string | null) => (s === null ? null : Buffer.from(s, 'base64'));
  return stdout
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => {
      const r = JSON.parse(l) as { topic: string; key: string | null; value: string | null; headers: Array<[string, string | null]> };
      return { topic: r.topic, key: b(r.key), value: b(r.value), headers: r.headers.map(([k, v]) => [k, b(v)] as [string, Buffer | null]) };
    });
}

/** kafkajs's consumer, with the codecs outboxd registers in kafkajs (installKafkajs): every record of `topic`. */
async function readWithKafkajs(brokers: string[], topic: string, count: number): Promise<Read[]> {
  const k = installKafkajs();
  const consumer = new k.Kafka({ brokers, logLevel: k.logLevel.NOTHING }).consumer({ groupId: `read-${randomUUID()}` });
  const out: Read[] = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ message }) => {
        const headers = Object.entries(message.headers ?? {}).map(
          ([h, v]) => [h, (v as Buffer | undefined) ?? null] as [string, Buffer | null],
        );
        out.push({ topic, key: message.key, value: message.value, headers });
      },
    });
    await until(`kafkajs to read ${count} records of ${topic}`, async () => out.length >= count || undefined, 90_000);
  } finally {
    await consumer.disconnect();
  }
  return out;
}

/** DumpLogSegments --deep-iteration of every segment of these topics: each batch's codec and count. */
async function storedBatches(
  kafka: KafkaServer,
  topics: string[],
): Promise<Array<{ topic: string; codec: string; count: number; control: boolean; records: number }>> {
  const libs = await kafkaLibs();
  const out: Array<{ topic: string; codec: string; count: number; control: boolean; records: number }> = [];
  for (const dir of readdirSync(kafka.dataDir)) {
    const topic = topics.find((t) => dir.startsWith(`${t}-`) && /^\d+$/.test(dir.slice(t.length + 1)));
    if (topic === undefined) continue;
    const files = readdirSync(join(kafka.dataDir, dir))
      .filter((f) => f.endsWith('.log'))
      .map((f) => join(kafka.dataDir, dir, f));
    if (files.length === 0) continue;
    const java = process.env.JAVA_HOME ? join(process.env.JAVA_HOME, 'bin/java') : 'java';
    const { stdout } = await run(
      java,
      ['-Xmx256m', '-cp', `${libs}/*`, 'kafka.tools.DumpLogSegments', '--deep-iteration', '--files', files.join(',')],
      { maxBuffer: 64 << 20, timeout: 120_000 },
    );
    let last: (typeof out)[number] | undefined;
    for (const line of stdout.split('\n')) {
      const batch = /^baseOffset: \d+ lastOffset: \d+ count: (\d+) .*isControl: (true|false) .*compresscodec: (\w+)/.exec(line);
      if (batch) {
        last = { topic, codec: batch[3] as string, count: Number(batch[1]), control: batch[2] === 'true', records: 0 };
        out.push(last);
      } else if (line.startsWith('| offset:') && last) last.records++;
    }
  }
  return out;
}

describe('sink.kafka.compression against a real broker', () => {
  let kafka: KafkaServer;
  beforeAll(async () => {
    kafka = await startKafka();
  }, 180_000);
  afterAll(async () => {
    await kafka?.destroy();
  });

  it('outboxd validate --connect accepts every codec and says it loads', async () => {
    await using db = await new TestDb(await pgUrl(15)).create();
    for (const compression of ['none', 'gzip', 'snappy', 'lz4', 'zstd']) {
      await using cfg = await writeConfig(
        (port) =>
          `postgres:\n  url: ${db.url}\n  slot: ${db.slot}\noutbox:\n  tables:\n    - name: public.outbox\nsink:\n  type: kafka\n  kafka:\n    brokers: [${kafka.brokers.join(', ')}]\n    compression: ${compression}\nhttp:\n  host: 127.0.0.1\n  port: ${port}\n`,
      );
      const r = await CliProcess.run(['validate', '-c', cfg.file, '--connect']);
      expect(r.stdout).toMatch(new RegExp(`^ok\\s+kafka compression: ${compression}`, 'm'));
      expect(r.stdout).toMatch(/^ok\s+kafka broker: /m);
    }
    await using bad = await writeConfig(
      (port) =>
        `postgres:\n  url: ${db.url}\n  slot: ${db.slot}\nsink:\n  type: kafka\n  kafka:\n    brokers: [${kafka.brokers.join(', ')}]\n    compression: brotli\nhttp:\n  port: ${port}\n`,
    );
    const r = await CliProcess.run(['validate', '-c', bad.file]);
    expect(r.code).not.toBe(0);
    expect(`${r.stdout}${r.stderr}`).toMatch(/compression.*none, gzip, snappy, lz4, zstd/);
  }, 120_000);

  it.each(CASES)(
    '$compression, $path: librdkafka reads every key and value back byte for byte; the broker stores $compression batches',
    async (c) => {
      await using db = await new TestDb(await pgUrl(15)).create();
      const tag = db.name.slice(2, 10);
      const type = `codec_${tag}`;
      const topic = `outbox.event.${type}`;
      const dlq = `dlq_${tag}`;
      const ckpt = `ckpt_${tag}`;
      const admin = new kafkajs.Kafka({ brokers: kafka.brokers, logLevel: kafkajs.logLevel.NOTHING }).admin();
      await admin.connect();
      try {
        await admin.createTopics({
          waitForLeaders: true,
          topics: [
            { topic, numPartitions: 3, configEntries: [{ name: 'max.message.bytes', value: String(MAX_MESSAGE + 4096) }] },
            { topic: dlq, numPartitions: 1, configEntries: [{ name: 'max.message.bytes', value: String(4 << 20) }] },
            ...(c.path === 'exactly-once'
              ? [{ topic: ckpt, numPartitions: 1, configEntries: [{ name: 'cleanup.policy', value: 'compact' }] }]
              : []),
          ],
        });
      } finally {
        await admin.disconnect();
      }
      await using cfg = await writeConfig(
        (port) => `postgres:
  url: ${db.url}
  slot: ${db.slot}
  statusInterval: 1s
outbox:
  tables:
    - name: public.outbox
  onPoison: dead-letter
sink:
  type: kafka
  kafka:
    brokers: [${kafka.brokers.join(', ')}]
    compression: ${c.compression}
    workers: ${c.path === 'workers' ? 2 : 0}
    maxMessageBytes: ${MAX_MESSAGE}
    deadLetterTopic: ${dlq}
${c.path === 'exactly-once' ? `    delivery: exactly-once\n    checkpointTopic: ${ckpt}\n` : ''}http:
  host: 127.0.0.1
  port: ${port}
`,
      );
      await using relays = new AsyncDisposableStack();
      let relay = c.path === 'replay' ? null : relays.use(new RelayProcess(cfg.file, cfg.port));
      if (relay) await relay.ready();

      // Varied payloads: multi-byte UTF-8, escapes, values up to ~200 KB; one over maxMessageBytes (poison).
      const poisonId = randomUUID();
      const texts = ['Zürich', '東京 🚚', 'Łódź ✓', 'a"b\\c\n', 'plain'];
      for (let t = 0; t < 6; t++) {
        if (t === 3 && relay && c.path === 'exactly-once') {
          // A crash mid-stream: the next relay reads the last checkpoint, a compressed record,
          // back (kafkajs's Fetch through our codec) and publishes what follows exactly once.
          const r = relay;
          await until('half the rows published', async () => (await r.metric('outboxd_messages_published_total')) >= ROWS / 2, 60_000);
          r.kill('SIGKILL');
          await r.exited;
          relay = relays.use(new RelayProcess(cfg.file, cfg.port));
          await relay.ready();
        }
        const values: unknown[] = [];
        const tuples: string[] = [];
        for (let i = t * (ROWS / 6); i < (t + 1) * (ROWS / 6); i++) {
          const size = i % 37 === 0 ? 60_000 + i * 450 : 200 + ((i * 97) % 900);
          const filler =
            i % 2 === 0 ? randomBytes(Math.ceil(size / 2)).toString('hex') : (texts[i % texts.length] as string).repeat(size / 8);
          values.push(
            randomUUID(),
            type,
            `key-${i % 23}-${texts[i % texts.length]}`,
            JSON.stringify({ i, city: texts[i % texts.length], filler }),
          );
          const b = (values.length / 4 - 1) * 4;
          tuples.push(`($${b + 1}, $${b + 2}, $${b + 3}, 'Tested', $${b + 4})`);
        }
        if (t === 3) {
          values.push(poisonId, type, 'poison', JSON.stringify({ poison: 'x'.repeat(MAX_MESSAGE + 1000) }));
          const b = (values.length / 4 - 1) * 4;
          tuples.push(`($${b + 1}, $${b + 2}, $${b + 3}, 'Tested', $${b + 4})`);
        }
        await db.client.query(
          `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload) VALUES ${tuples.join(', ')}`,
          values,
        );
      }
      if (c.path === 'replay') {
        const r = await CliProcess.run(['replay', '-c', cfg.file, '--where', 'id IS NOT NULL']);
        expect(r.code, r.stderr).toBe(0);
        expect(r.stderr).toMatch(new RegExp(`${ROWS + 1} rows read, ${ROWS} published, 1 poison \\(1 dead-lettered\\)`));
      }
      // What Postgres holds: each row's key and payload as text (jsonb's output), byte for byte.
      const { rows } = await db.client.query<{ id: string; aggregateid: string; payload: string }>(
        'SELECT id::text, aggregateid, payload::text FROM public.outbox WHERE id <> $1',
        [poisonId],
      );
      expect(rows).toHaveLength(ROWS);

      const read = await readWithLibrdkafka(kafka.brokers, [topic, dlq], ROWS + 1);
      const data = read.filter((r) => r.topic === topic);
      const letters = read.filter((r) => r.topic === dlq);
      const pair = (k: Buffer | string | null, v: Buffer | string | null) =>
        `${Buffer.from(k ?? '').toString('hex')}:${Buffer.from(v ?? '').toString('hex')}`;
      expect(data.map((r) => pair(r.key, r.value)).sort()).toEqual(rows.map((r) => pair(r.aggregateid, r.payload)).sort());
      if (c.compression === 'lz4') {
        // A second reader of outboxd's own LZ4 frames: kafkajs's consumer (lz4_flex's frame decoder).
        const viaKafkajs = await readWithKafkajs(kafka.brokers, topic, ROWS);
        expect(viaKafkajs.map((r) => pair(r.key, r.value)).sort()).toEqual(rows.map((r) => pair(r.aggregateid, r.payload)).sort());
        const headersOf = (rs: Read[]) => rs.map((r) => r.headers.map(([h, v]) => `${h}=${v?.toString('hex')}`).join('&')).sort();
        expect(headersOf(viaKafkajs)).toEqual(headersOf(data));
      }
      expect(letters).toHaveLength(1);
      const letterHeaders = Object.fromEntries((letters[0] as Read).headers.map(([k, v]) => [k, v?.toString() ?? null]));
      expect(letterHeaders.id).toBe(poisonId);
      expect(letterHeaders['outboxd.error_reason']).toBe('oversized');

      // The broker's own view of what it stores: every data batch has the codec, and deep
      // iteration (which decompresses) finds every record.
      const stored = await until('the segments to hold every record', async () => {
        const batches = await storedBatches(kafka, [topic, dlq, ...(c.path === 'exactly-once' ? [ckpt] : [])]);
        const records = batches.filter((b) => b.topic === topic && !b.control).reduce((n, b) => n + b.records, 0);
        return records >= ROWS ? batches : undefined;
      });
      const dataBatches = stored.filter((b) => !b.control);
      expect(dataBatches.length).toBeGreaterThan(0);
      expect(new Set(dataBatches.map((b) => b.codec))).toEqual(new Set([c.compression]));
      expect(dataBatches.filter((b) => b.topic === topic).reduce((n, b) => n + b.records, 0)).toBe(ROWS);
      expect(dataBatches.every((b) => b.records === b.count)).toBe(true);
      expect(dataBatches.some((b) => b.topic === dlq)).toBe(true);
      if (c.path === 'exactly-once') expect(dataBatches.some((b) => b.topic === ckpt)).toBe(true);
      if (relay) {
        relay.kill('SIGTERM');
        expect(await relay.exited).toBe(0);
      }
    },
    240_000,
  );
});
