/**
 * Pruning rate (issue 14): how fast `outbox.prune.mode: delete` removes confirmed rows from a
 * large outbox, with the shipped batch size and pause and without the pause.
 *
 *   npm run bench:prune                 (BENCH_PRUNE_ROWS=1000000 by default)
 *
 * For each setting: a fresh outbox of BENCH_PRUNE_ROWS rows created two hours ago, written after
 * the relay (with the discarding sink, bench/children/discard-relay.ts) started, so that every row
 * streams and is confirmed; retain 1h. The clock runs from the first pruned row to the last; the
 * rate is rows over that time. Prints one line per setting; Postgres 15 from the test harness
 * (or OUTBOXD_BENCH_PG_URL).
 */
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChild, stopChild } from './lib/child.js';
import { note } from './lib/log.js';
import { benchFile } from './lib/paths.js';
import { connect } from './lib/pg.js';
import { startServices } from './lib/services.js';

const ROWS = Number(process.env.BENCH_PRUNE_ROWS ?? 1_000_000);
const SETTINGS = [
  { name: 'shipped defaults (batchSize 5000, pause 100ms)', batchSize: 5000, pause: '100ms' },
  { name: 'batchSize 5000, no pause', batchSize: 5000, pause: '0' },
  { name: 'batchSize 20000, no pause', batchSize: 20000, pause: '0' },
];

const services = await startServices({ kafka: false, rabbitmq: false });
const db = await connect(services.dbUrl);
const port = 19_187;
try {
  for (const [i, s] of SETTINGS.entries()) {
    const slot = `prune_bench_${i}`;
    const pub = `prune_bench_${i}`;
    await db.query(`DROP TABLE IF EXISTS prune_outbox; DROP PUBLICATION IF EXISTS ${pub}`);
    await db.query(`CREATE TABLE prune_outbox (
      id uuid PRIMARY KEY DEFAULT gen_random_uuid(), aggregatetype text NOT NULL, aggregateid text NOT NULL, type text,
      payload jsonb NOT NULL, headers jsonb, correlation_id text, causation_id text, reply_to text, traceparent text,
      created_at timestamptz NOT NULL DEFAULT now());
      CREATE INDEX prune_outbox_created_at_idx ON prune_outbox (created_at)`);
    const file = join(tmpdir(), `outboxd-prune-bench-${i}.yaml`);
    writeFileSync(
      file,
      `postgres:
  url: ${services.dbUrl}
  slot: ${slot}
  publication: ${pub}
  statusInterval: 1s
  heartbeat: { interval: 1s }
outbox:
  tables: [{ name: public.prune_outbox }]
  messages: { enabled: false }
  prune: { mode: delete, retain: 1h, interval: 1s, batchSize: ${s.batchSize}, pause: ${s.pause} }
http: { host: 127.0.0.1, port: ${port} }
log: { level: warn }
`,
    );
    const relay = startChild(process.execPath, [benchFile('children/discard-relay.js'), file]);
    const metric = async (name: string): Promise<number> => {
      try {
        const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
        return body
          .split('\n')
          .filter((l) => l.startsWith(`${name}{`) || l.startsWith(`${name} `))
          .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
      } catch {
        return Number.NaN;
      }
    };
    try {
      while ((await fetch(`http://127.0.0.1:${port}/readyz`).catch(() => null))?.status !== 200) await sleep(200);
      const t0 = performance.now();
      await db.query(
        `INSERT INTO prune_outbox (aggregatetype, aggregateid, type, payload, created_at)
         SELECT 'order', 'k' || (g % 1000), 'Created', jsonb_build_object('seq', g, 'pad', repeat('x', 200)), now() - interval '2 hours'
           FROM generate_series(1, $1) g`,
        [ROWS],
      );
      note(`[prune] ${s.name}: ${ROWS} rows written in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
      let first = 0;
      for (;;) {
        const n = await metric('outboxd_pruned_rows_total');
        if (n > 0 && first === 0) first = performance.now();
        if (n >= ROWS) break;
        if (relay.exitCode !== null) throw new Error(`relay exited: ${relay.stderrTail()}`);
        await sleep(50);
      }
      const seconds = (performance.now() - first) / 1000;
      const { rows } = await db.query<{ n: string }>('SELECT count(*) AS n FROM prune_outbox');
      console.log(`prune ${s.name}: ${ROWS} rows in ${seconds.toFixed(1)} s = ${Math.round(ROWS / seconds)} rows/s (left: ${rows[0]?.n})`);
    } finally {
      await stopChild(relay);
      await db.query('SELECT pg_drop_replication_slot($1) FROM pg_replication_slots WHERE slot_name = $1', [slot]);
    }
  }
} finally {
  await db.query('DROP TABLE IF EXISTS prune_outbox').catch(() => undefined);
  await db.end();
  await services.close();
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
