import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { RelayProcess, TestDb, defer, until, writeConfig } from './support.js';
import { pgUrl } from '../harness/services.js';

/**
 * Creating a slot waits for every transaction running at that moment. The relay says what it
 * waits for (/readyz and the log name the transactions), stays live (a dependency, not a hang),
 * gives up after postgres.slotCreateTimeout and tries again, and streams once they end.
 */
describe('slot creation behind a long transaction', () => {
  it('names the transactions it waits for, stays live, retries after slotCreateTimeout, and streams once they end', async () => {
    await using db = await new TestDb(await pgUrl(17)).create();
    // A transaction with an xid, left open.
    const blocker = new pg.Client({ connectionString: db.url });
    await blocker.connect();
    await using _blocker = defer(() => blocker.end().catch(() => undefined));
    await blocker.query('BEGIN');
    await blocker.query('SELECT txid_current()');
    const { rows } = await blocker.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    const pid = rows[0]?.pid as number;

    await using cfg = await writeConfig(
      (port) => `postgres:
  url: ${db.url}
  slot: ${db.slot}
  slotCreateTimeout: 5s
  reconnect: { initial: 100ms, max: 500ms }
http:
  host: 127.0.0.1
  port: ${port}
`,
    );
    await using relay = new RelayProcess(cfg.file, cfg.port);
    const body = await until(
      'readyz naming the blocking transaction',
      async () => {
        const r = await relay.http('/readyz').catch(() => ({ status: 0, body: '' }));
        return r.status === 503 && r.body.includes(`pid ${pid}`) ? r.body : undefined;
      },
      20_000,
    );
    expect(body).toMatch(/creating replication slot s_\w+: waiting \d+ s for 1 running transaction\(s\) to end \(oldest: pid \d+, \d+ s\)/);
    expect((await relay.http('/livez')).status).toBe(200);
    const waitLog = relay.logLines().find((l) => l.msg === 'creating the replication slot waits for running transactions to end');
    expect((waitLog?.blockers as Array<{ pid: number }>)?.[0]?.pid).toBe(pid);
    // Past slotCreateTimeout it gives up on this attempt, says so, and tries again.
    await until(
      'a retry after the timeout',
      async () => /still waiting for running transactions to end after 5 s/.test(relay.stderr),
      20_000,
    );
    expect((await relay.http('/livez')).status).toBe(200);
    await blocker.query('COMMIT');
    await relay.ready(30_000);
    expect(relay.stderr).not.toMatch(/"level":"fatal"/);
  }, 90_000);
});
