import { randomUUID } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type Bundle, type Delivered, bundle, steadyWriter, waitDelivered } from '../faults/fixtures.js';
import { CliProcess, until } from './support.js';

/**
 * `outboxd replay` end to end: the real CLI against a real Postgres 15 and a real Kafka or
 * RabbitMQ, beside (and compared with) the live relay, read back with independent consumers.
 */

const REPLAY = 'outboxd-replay';
/** The source position the live relay adds; a replay cannot know it and leaves it out. */
const POSITION = ['outboxd.lsn', 'outboxd.xid'];

/** Inserts rows with explicit created_at; returns their ids in insert order. */
async function insertRows(
  b: Bundle,
  rows: Array<{ type?: string; key: string; at: string; payload?: string; headers?: string | null }>,
): Promise<string[]> {
  const ids: string[] = [];
  for (const r of rows) {
    const id = randomUUID();
    await b.db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, headers, created_at)
       VALUES ($1, $2, $3, 'Tested', $4, $5, $6)`,
      [id, r.type ?? b.types[0], r.key, r.payload ?? `{"key": "${r.key}"}`, r.headers ?? null, r.at],
    );
    ids.push(id);
  }
  return ids;
}

const replayed = (b: Bundle, runId: string): Delivered[] => b.reader.delivered().filter((d) => d.headers[REPLAY] === runId);
/** A message on the dead-letter topic or queue (the fixture names them dlq_…). */
const isLetter = (d: Delivered): boolean => d.stream.startsWith('dlq_');
/** Waits until the replay `runId` delivered every id in `ids`. */
async function waitReplayed(b: Bundle, runId: string, ids: readonly string[], timeoutMs = 30_000): Promise<void> {
  await until(
    `${ids.length} ids replayed`,
    async () => {
      const got = new Set(replayed(b, runId).map((d) => d.id));
      return ids.every((id) => got.has(id));
    },
    timeoutMs,
    100,
  );
}
const live = (b: Bundle): Delivered[] => b.reader.delivered().filter((d) => d.headers[REPLAY] === undefined);

/** The run id the replay printed when it started. */
function runIdOf(stderr: string): string {
  const m = /outboxd replay ([0-9a-f-]{36}):/.exec(stderr);
  if (!m) throw new Error(`no run id in: ${stderr}`);
  return m[1] as string;
}

function withoutPosition(h: Record<string, string>): Record<string, string> {
  const out = { ...h };
  for (const k of [...POSITION, REPLAY]) delete out[k];
  return out;
}

/** A jsonb payload and headers with numbers past double precision, and text beyond ASCII. */
const TRICKY_PAYLOAD = '{"big": 123456789012345678901234567890.123456789000, "tiny": 1e-400, "u": "ünï ✓ 🎉 x", "esc": "a\\"b\\\\c\\n"}';
const TRICKY_HEADERS =
  '{"tenant": "äcmé ✓", "amount": 12345678901234567890123, "ratio": 0.1000000000000000055511151231257827, "nested": {"a": [1, 2.50]}}';

describe.each(['kafka', 'rabbitmq'] as const)('outboxd replay → %s', (kind) => {
  it('replays a time window and a --where filter: original ids, the replay header, the same bytes as the live relay; poison dead-lettered', async () => {
    await using b = await bundle({ kind, onPoison: 'dead-letter' });
    const [t0, t1] = b.types as [string, string];
    // The live relay publishes everything once; that is what the replay must reproduce byte for byte.
    const relay = b.start();
    await relay.ready();
    const old = await insertRows(
      b,
      Array.from({ length: 10 }, (_, i) => ({ key: `k${i % 3}`, at: `2020-01-01 00:00:${String(i).padStart(2, '0')}+00` })),
    );
    const window = await insertRows(b, [
      ...Array.from({ length: 20 }, (_, i) => ({
        type: i % 2 ? t0 : t1,
        key: `k${i % 4}`,
        at: `2021-06-01 12:00:${String(i).padStart(2, '0')}+02`,
      })),
      { key: 'tricky', at: '2021-06-02 00:00:00+00', payload: TRICKY_PAYLOAD, headers: TRICKY_HEADERS },
    ]);
    // Poison: a headers value that is not a JSON object (bad_headers). Dead-lettered by both.
    const [poison] = await insertRows(b, [{ key: 'bad', at: '2021-06-03 00:00:00+00', headers: '[1, 2]' }]);
    const late = await insertRows(b, [
      { key: 'k1', at: '2022-01-01 00:00:00+00' },
      { key: 'k2', at: '2023-05-05 00:00:00+00' },
    ]);

    await waitDelivered(b.reader, [...old, ...window, poison as string, ...late], 60_000);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);

    // [2021-01-01, 2022-01-01): the window's rows and the poison row; 2022-01-01 itself is out.
    const r = await CliProcess.run(['replay', '-c', b.configFile, '--from', '2021-01-01 00:00:00+00', '--to', '2022-01-01T00:00:00Z']);
    expect(r.code, r.stderr).toBe(0);
    const runId = runIdOf(r.stderr);
    expect(r.stderr).toMatch(
      new RegExp(`replay ${runId}: done in [\\d.]+s: 22 rows read, 21 published, 1 poison \\(1 dead-lettered\\), 0 skipped`),
    );
    // The replay's own copies (the live relay's, delivered above, would satisfy a wait for the ids).
    await waitReplayed(b, runId, window);
    // Everything the broker holds is read (RabbitMQ: a sentinel behind it came back): no more can come.
    await b.reader.caughtUp();
    const main = replayed(b, runId).filter((d) => !isLetter(d));
    expect(main.map((d) => d.id).sort()).toEqual([...window].sort());

    const original = new Map(live(b).map((d) => [d.id, d]));
    for (const d of main) {
      const o = original.get(d.id) as Delivered;
      expect(o, d.id).toBeDefined();
      expect(Buffer.compare(d.value, o.value), `payload of ${d.id}`).toBe(0);
      expect(d.key).toBe(o.key);
      expect(d.stream).toBe(o.stream); // the same topic and partition, or queue
      expect(withoutPosition(d.headers)).toEqual(withoutPosition(o.headers));
      for (const h of POSITION) expect(d.headers[h]).toBeUndefined();
    }
    const tricky = main.find((d) => d.key === 'tricky') as Delivered;
    expect(tricky.value.toString()).toContain('123456789012345678901234567890.123456789000');
    expect(tricky.headers.amount).toBe('12345678901234567890123');
    expect(tricky.headers.tenant).toBe('äcmé ✓');

    // The poison row went to the dead-letter destination again, marked with the run.
    await until('the replayed dead letter', async () => replayed(b, runId).some(isLetter), 30_000);
    // A second letter (there must be none) would be on the dead-letter topic or queue by now:
    // read it to its end before counting.
    await b.reader.caughtUp();
    const letters = replayed(b, runId).filter(isLetter);
    expect(letters.map((d) => [d.id, d.headers['outboxd.error_reason']])).toEqual([[poison, 'bad_headers']]);

    // --where alone: every retained row it selects, whatever its time.
    const w = await CliProcess.run(['replay', '-c', b.configFile, '--where', `aggregatetype = '${t0}' AND aggregateid IN ('k1', 'k2')`]);
    expect(w.code, w.stderr).toBe(0);
    const whereRun = runIdOf(w.stderr);
    expect(whereRun).not.toBe(runId);
    const rows = await b.db.client.query<{ id: string }>(
      `SELECT id::text FROM public.outbox WHERE aggregatetype = $1 AND aggregateid IN ('k1', 'k2')`,
      [t0],
    );
    expect(rows.rows.length).toBeGreaterThan(3);
    await waitReplayed(
      b,
      whereRun,
      rows.rows.map((x) => x.id),
    );
    await b.reader.caughtUp();
    expect(
      replayed(b, whereRun)
        .map((d) => d.id)
        .sort(),
    ).toEqual(rows.rows.map((x) => x.id).sort());
  });
});

describe('outboxd replay → kafka', () => {
  it('resumes from its checkpoint after SIGTERM, a kill -9 and a poison halt: every id once more, no repeats before the checkpoint beyond one batch, one run id', async () => {
    await using b = await bundle({ kind: 'kafka', onPoison: 'halt' });
    const total = 40_000;
    // batchMaxMessages is 500 in the bundle's config.
    await b.db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, created_at)
       SELECT gen_random_uuid(), CASE WHEN g % 2 = 0 THEN $1 ELSE $2 END, 'k' || (g % 50), 'Tested',
              jsonb_build_object('seq', g), timestamptz '2024-01-01' + g * interval '1 ms'
         FROM generate_series(1, $3) g`,
      [b.types[0], b.types[1], total],
    );
    // A poison row three quarters in: its headers are not an object.
    const { rows: bad } = await b.db.client.query<{ id: string }>(
      `UPDATE public.outbox SET headers = '"not an object"' WHERE payload->>'seq' = '30000' RETURNING id::text`,
    );
    const poisonId = bad[0]?.id as string;
    const checkpoint = join(b.configFile, '..', 'replay.checkpoint');
    const args = ['replay', '-c', b.configFile, '--from', '2024-01-01', '--checkpoint', checkpoint];
    const progress = () => {
      try {
        return JSON.parse(readFileSync(checkpoint, 'utf8')) as { runId: string; tables: Record<string, { rows: number; done: boolean }> };
      } catch {
        return null; // not written yet
      }
    };

    const done = () => progress()?.tables['public.outbox']?.rows ?? 0;

    // 1. SIGTERM: stops after the batch in progress is confirmed and checkpointed, exit 130.
    const first = new CliProcess(args);
    await until('a few batches checkpointed', async () => done() >= 1_000, 60_000, 5);
    first.child.kill('SIGTERM');
    expect(await first.exited, first.stderr).toBe(130);
    const runId = progress()?.runId as string;
    expect(first.stderr).toMatch(new RegExp(`replay ${runId}: interrupted in [\\d.]+s: ${done()} rows read, ${done()} published`));

    // 2. Resumed, then killed hard once a few more batches are confirmed.
    const stoppedAt = done();
    const second = new CliProcess(args);
    await until('more batches checkpointed', async () => done() >= stoppedAt + 2_000, 60_000, 5);
    second.child.kill('SIGKILL');
    await second.exited;
    expect(runIdOf(second.stderr)).toBe(runId);
    const killedAt = done();
    expect(killedAt).toBeLessThan(29_999);

    // A different filter with the same file is refused.
    const other = await CliProcess.run(['replay', '-c', b.configFile, '--from', '2024-01-02', '--checkpoint', checkpoint]);
    expect(other.code).toBe(2);
    expect(other.stderr.trim()).toMatch(
      /^outboxd: --checkpoint .* belongs to a replay with another filter: --from "2024-01-02" \(checkpoint: "2024-01-01"\); use another file$/,
    );

    // 3. Resumed: runs up to the poison row and halts there, exit 1, naming it.
    const halted = await CliProcess.run(args);
    expect(halted.code, halted.stderr).toBe(1);
    expect(runIdOf(halted.stderr)).toBe(runId);
    expect(halted.stderr).toMatch(new RegExp(`resuming \\(${killedAt} rows done before\\)`));
    expect(halted.stderr).toMatch(
      new RegExp(`^outboxd: replay halted at poison row id ${poisonId} in public.outbox \\(bad_headers\\): .*--checkpoint to resume$`, 'm'),
    );
    expect(progress()?.tables['public.outbox']).toEqual(expect.objectContaining({ rows: 29_999, done: false }));

    // 4. The row fixed, resumed again: the rest, from the poison row on.
    await b.db.client.query('UPDATE public.outbox SET headers = NULL WHERE id = $1', [poisonId]);
    const last = await CliProcess.run(args);
    expect(last.code, last.stderr).toBe(0);
    expect(last.stderr).toMatch(/10001 rows read, 10001 published, 0 poison/);
    expect(progress()?.tables['public.outbox']).toEqual(expect.objectContaining({ rows: total, done: true }));

    const { rows: all } = await b.db.client.query<{ id: string }>('SELECT id::text FROM public.outbox');
    await waitDelivered(
      b.reader,
      all.map((r) => r.id),
      60_000,
    );
    await b.reader.caughtUp();
    const got = replayed(b, runId);
    expect(new Set(got.map((d) => d.id)).size).toBe(total);
    // Only the batch in flight at the kill -9 may come twice: rows killedAt+1 .. killedAt+500 in
    // the replay's order, which is `seq` order (created_at grows with it). SIGTERM, the halt and
    // the resumes repeat nothing.
    expect(got.length - total).toBeLessThanOrEqual(500);
    const seen = new Set<string>();
    const repeatedSeqs: number[] = [];
    for (const d of got) {
      if (seen.has(d.id)) repeatedSeqs.push((JSON.parse(d.value.toString()) as { seq: number }).seq);
      else seen.add(d.id);
    }
    expect(repeatedSeqs.filter((seq) => seq <= killedAt || seq > killedAt + 500)).toEqual([]);
    // A finished run's checkpoint replays nothing more.
    const again = await CliProcess.run(args);
    expect(again.code).toBe(0);
    expect(again.stderr).toMatch(/0 rows read, 0 published, 0 poison \(0 dead-lettered\), 40000 skipped/);
  });

  it('beside a running exactly-once relay: publishes at least once without its transactional id, and the relay keeps delivering', async () => {
    await using b = await bundle({ kind: 'kafka', exactlyOnce: true });
    const relay = b.start();
    await relay.ready();
    await b.db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, created_at)
       SELECT gen_random_uuid(), $1, 'k' || (g % 20), 'Tested', jsonb_build_object('seq', g), timestamptz '2024-01-01' + g * interval '1 ms'
         FROM generate_series(1, 5000) g`,
      [b.types[0]],
    );
    const writer = steadyWriter(b, 20);
    const r = await CliProcess.run(['replay', '-c', b.configFile, '--from', '2024-01-01', '--to', '2024-01-02']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/5000 rows read, 5000 published/);
    // The relay would be fenced at its next transaction: wait for two it committed after the replay.
    const committed = await relay.metric('outboxd_kafka_transactions_total', { result: 'committed' });
    await until(
      'the relay to commit transactions after the replay',
      async () => (await relay.metric('outboxd_kafka_transactions_total', { result: 'committed' })) >= committed + 2,
      30_000,
      100,
      { abortReason: () => (relay.child.exitCode !== null ? `outboxd exited with ${relay.child.exitCode}` : undefined) },
    );
    await writer.stop();
    await waitDelivered(b.reader, writer.ids, 30_000);
    expect((await relay.http('/readyz')).status).toBe(200);
    expect(await relay.metric('outboxd_fenced')).toBe(0);
    expect(relay.child.exitCode).toBeNull();
    await b.reader.caughtUp();
    // read_committed: the live rows once each (the relay's transactions), the replayed ones once more.
    const runId = runIdOf(r.stderr);
    expect(replayed(b, runId)).toHaveLength(5000);
    const liveIds = live(b).map((d) => d.id);
    expect(new Set(liveIds).size).toBe(liveIds.length);
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
  });

  it('in a SQL_ASCII database: text that is not UTF-8 is poison (bad_encoding), never sent with replacement characters', async () => {
    await using b = await bundle({
      kind: 'kafka',
      onPoison: 'dead-letter',
      encoding: 'SQL_ASCII',
      ddl: ['CREATE TABLE public.outbox (id text PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload text)'],
    });
    await b.db.client.query(
      `INSERT INTO public.outbox VALUES ('bad-1', $1, 'k', 'T', 'caf' || convert_from('\\xe9'::bytea, 'SQL_ASCII'))`,
      [b.types[0]],
    );
    await b.db.client.query(`INSERT INTO public.outbox VALUES ('good-1', $1, 'k', 'T', 'caf\u00e9 ✓')`, [b.types[0]]);
    const r = await CliProcess.run(['replay', '-c', b.configFile, '--where', 'id IS NOT NULL']);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stderr).toMatch(/2 rows read, 1 published, 1 poison \(1 dead-lettered\)/);
    await waitDelivered(b.reader, ['bad-1', 'good-1'], 30_000);
    const good = b.reader.delivered().find((d) => d.id === 'good-1') as Delivered;
    expect(good.value.toString('hex')).toBe(Buffer.from('caf\u00e9 ✓').toString('hex'));
    const bad = b.reader.delivered().find((d) => d.id === 'bad-1') as Delivered;
    expect(bad.headers['outboxd.error_reason']).toBe('bad_encoding');
    expect(bad.headers[REPLAY]).toBe(runIdOf(r.stderr));
  });

  it('a table without created_at: --from is refused naming it; --where --dry-run counts per destination and connects to no broker', async () => {
    await using b = await bundle({
      kind: 'kafka',
      ddl: [
        'CREATE TABLE public.outbox (id uuid PRIMARY KEY, aggregatetype text NOT NULL, aggregateid text NOT NULL, type text, payload jsonb NOT NULL)',
      ],
    });
    for (let i = 0; i < 7; i++) {
      await b.db.client.query(`INSERT INTO public.outbox VALUES (gen_random_uuid(), $1, 'k', 'T', '{}')`, [b.types[i % 2]]);
    }
    const from = await CliProcess.run(['replay', '-c', b.configFile, '--from', '2024-01-01']);
    expect(from.code).toBe(2);
    expect(from.stderr.trim().split('\n')).toEqual([
      'outboxd: --from/--to compare with column "created_at", which table public.outbox does not have (outbox.tables[0].columns.created_at); replay it with --where only',
    ]);
    // The same config with a broker nobody listens on: a dry run must not need it.
    const offline = join(b.configFile, '..', 'offline.yaml');
    writeFileSync(offline, readFileSync(b.configFile, 'utf8').replace(/brokers: \[[^\]]*\]/, 'brokers: [127.0.0.1:1]'));
    const dry = await CliProcess.run([
      'replay',
      '-c',
      offline,
      '--where',
      `aggregatetype IN ('${b.types[0]}', '${b.types[1]}')`,
      '--dry-run',
    ]);
    expect(dry.code, dry.stderr).toBe(0);
    expect(dry.stdout.trim().split('\n').sort()).toEqual(
      [
        'table\tdestination\tmessages',
        `public.outbox\toutbox.event.${b.types[0]}\t4`,
        `public.outbox\toutbox.event.${b.types[1]}\t3`,
      ].sort(),
    );
    expect(dry.stderr).toMatch(/dry run \(nothing published\) in [\d.]+s: 7 rows read, 7 would be published/);
    // Injection attempts are usage errors before anything connects.
    const evil = await CliProcess.run(['replay', '-c', b.configFile, '--where', "aggregatetype = 'x'; DROP TABLE public.outbox"]);
    expect(evil.code).toBe(2);
    expect(evil.stderr.trim()).toBe('outboxd: --where: unexpected character ";" at position 20');
    const none = await CliProcess.run(['replay', '-c', b.configFile]);
    expect(none.code).toBe(2);
    expect((await b.db.client.query('SELECT count(*)::int AS n FROM public.outbox')).rows[0]).toEqual({ n: 7 });
    expect(b.reader.delivered()).toEqual([]);
  });
});
