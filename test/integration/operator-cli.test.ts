import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { getFreePort } from '../harness/ports.js';
import { MAIN, RelayProcess, TestDb, defer, writeConfig } from './support.js';
import { pgUrl, kafkaBrokers } from '../harness/services.js';

/** The operator's commands against a real Postgres and Kafka: validate --connect, status, setup. */
function outboxd(args: string[]) {
  const r = spawnSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A Kafka config for the database; `await using` removes it. */
function config(pgUrl: string, slot: string, brokers: string, extra = '') {
  return writeConfig(
    (port) => `postgres:
  url: ${pgUrl}
  slot: ${slot}
outbox:
  tables:
    - name: public.outbox
${extra}
sink:
  type: kafka
  kafka:
    brokers: [${brokers}]
    connectionTimeout: 1s
http:
  host: 127.0.0.1
  port: ${port}
`,
  );
}

/** A database of its own; `await using` drops it. */
async function db(ddl?: string[]) {
  return new TestDb(await pgUrl(15)).create(ddl);
}

describe('outboxd validate --connect', () => {
  it('passes every check on a ready environment, one line each', async () => {
    await using d = await db();
    await using cfg = await config(d.url, d.slot, (await kafkaBrokers()).join(','));
    const r = outboxd(['validate', '-c', cfg.file, '--connect']);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split('\n');
    for (const name of [
      'postgres connection',
      'wal_level',
      'replication privilege',
      'table public.outbox',
      'publication',
      'replication slot',
      'max_slot_wal_keep_size',
      'kafka broker',
    ]) {
      expect(
        lines.some((l) => new RegExp(`^(ok|warn)\\s+${name}: `).test(l)),
        `${name} in\n${r.stdout}`,
      ).toBe(true);
    }
    expect(lines.some((l) => l.startsWith('fail'))).toBe(false);
  });

  it('names what is wrong and how to fix it, and exits non-zero', async () => {
    await using d = await db(['CREATE TABLE public.outbox (id uuid PRIMARY KEY, aggregatetype text, payload jsonb)']);
    await d.client.query(`CREATE ROLE ${d.name}_weak LOGIN PASSWORD 'weak'`);
    await using _role = defer(() => d.client.query(`DROP ROLE IF EXISTS ${d.name}_weak`).catch(() => undefined));
    const u = new URL(d.url);
    u.username = `${d.name}_weak`;
    u.password = 'weak';
    const closedPort = await getFreePort();
    await using cfg = await config(u.toString(), d.slot, `127.0.0.1:${closedPort}`);
    const r = outboxd(['validate', '-c', cfg.file, '--connect']);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/^fail\s+replication privilege: .*ALTER ROLE <role> WITH REPLICATION$/m);
    expect(r.stdout).toMatch(/^fail\s+table public\.outbox: lacks aggregateid \(aggregateid\)/m);
    expect(r.stdout).toMatch(/^fail\s+kafka broker: /m);
    await d.client.query(`DROP OWNED BY ${d.name}_weak`);
  });
});

describe('outboxd status and setup', () => {
  it('setup --print prints DDL for the column mapping that creates a working outbox', async () => {
    await using d = await db([]);
    await using cfg = await config(
      d.url,
      d.slot,
      (await kafkaBrokers()).join(','),
      '      columns:\n        aggregateid: account_id\n        payload: body\n',
    );
    const r = outboxd(['setup', '-c', cfg.file, '--print']);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain('CREATE TABLE IF NOT EXISTS "public"."outbox"');
    expect(r.stdout).toMatch(/"account_id" text NOT NULL/);
    expect(r.stdout).toMatch(/"body" jsonb NOT NULL/);
    expect(r.stdout).toContain(`SELECT pg_create_logical_replication_slot('${d.slot}', 'pgoutput');`);
    // The printed SQL runs as is (the slot must be created outside a transaction that wrote).
    const [ddl, setupSql] = r.stdout.split('-- publication and slot:') as [string, string];
    await d.client.query(ddl);
    for (const stmt of setupSql.trim().split('\n')) await d.client.query(stmt);
    const cols = await d.client.query(`SELECT column_name FROM information_schema.columns WHERE table_name = 'outbox'`);
    expect(cols.rows.map((c) => c.column_name)).toEqual(expect.arrayContaining(['id', 'account_id', 'body', 'headers']));
    expect(await d.slotInfo()).not.toBeNull();
  });

  it('setup creates the publication and slot; status reports them; a lost slot exits 4', async () => {
    await using d = await db();
    await using cfg = await config(d.url, d.slot, (await kafkaBrokers()).join(','));
    let s = outboxd(['status', '-c', cfg.file]);
    expect(s.code).toBe(0);
    expect(s.stdout).toMatch(/slot .*: missing/);
    expect(s.stdout).toMatch(/does not exist yet/);

    const setup = outboxd(['setup', '-c', cfg.file]);
    expect(setup.code).toBe(0);
    expect(setup.stdout).toMatch(/publication outboxd: created/);
    expect(setup.stdout).toMatch(/replication slot .*: created/);
    expect(outboxd(['setup', '-c', cfg.file]).stdout).toMatch(/replication slot .*: exists/);

    await using relay = new RelayProcess(cfg.file, cfg.port);
    await relay.ready();
    s = outboxd(['status', '-c', cfg.file, '--json']);
    expect(s.code).toBe(0);
    const st = JSON.parse(s.stdout) as {
      active: boolean;
      confirmedFlushLsn: string;
      lagBytes: number;
      retainedWalBytes: number;
      walStatus: string;
    };
    expect(st.active).toBe(true);
    expect(st.confirmedFlushLsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(st.lagBytes).toBeGreaterThanOrEqual(0);
    expect(st.retainedWalBytes).toBeGreaterThanOrEqual(st.lagBytes);
    expect(st.walStatus).toBe('reserved');
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);
    expect(outboxd(['status', '-c', cfg.file]).stdout).toMatch(/: inactive/);

    await d.client.query('SELECT pg_drop_replication_slot($1)', [d.slot]);
    s = outboxd(['status', '-c', cfg.file]);
    expect(s.code).toBe(4);
    expect(s.stdout).toMatch(/gone although outboxd created it/);
  });
});
