import type pg from 'pg';

/**
 * One active relay per slot: the leader holds a session-level advisory lock on its admin
 * connection, so the server releases it when the leader's session ends, also when its process
 * dies. Postgres itself refuses a second consumer of an active slot (55006); the lock keeps
 * standbys quiet and hands the slot over the moment the leader's session ends.
 */

const lockKey = `hashtextextended('outboxd.slot.' || $1, 0)`;

/**
 * Tries the session-level advisory lock that marks the leader of a slot. Held until the admin
 * connection closes (also when the process dies: the server ends the session).
 */
export async function tryLeaderLock(client: pg.Client, slot: string): Promise<boolean> {
  const { rows } = await client.query<{ ok: boolean }>(`SELECT pg_try_advisory_lock(${lockKey}) AS ok`, [slot]);
  return rows[0]?.ok === true;
}

/**
 * Waits, inside Postgres, until the lock is free and then takes it: a standby blocks in
 * `pg_advisory_lock` instead of polling, and takes over as soon as the leader's session ends.
 * The wait has no statement timeout; aborting `signal` closes the connection, which ends it.
 */
export async function awaitLeaderLock(client: pg.Client, slot: string, statementTimeoutMs: number, signal: AbortSignal): Promise<void> {
  const onAbort = () => void client.end().catch(() => undefined);
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await client.query(`SELECT set_config('statement_timeout', '0', false)`);
    await client.query(`SELECT pg_advisory_lock(${lockKey})`, [slot]);
    await client.query(`SELECT set_config('statement_timeout', $1, false)`, [String(statementTimeoutMs)]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}
