import { withTimeout } from '../retry.js';
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

/**
 * Whether `client`'s own session holds the leader lock of `slot` (pg_locks; a bigint advisory lock
 * shows its key's high half as classid and its low half as objid, objsubid 1).
 */
export async function holdsLeaderLock(client: pg.Client, slot: string): Promise<boolean> {
  const { rows } = await client.query<{ held: boolean }>(
    `SELECT EXISTS (
       SELECT 1 FROM pg_locks
        WHERE locktype = 'advisory' AND objsubid = 1 AND granted AND pid = pg_backend_pid()
          AND ((classid::bigint << 32) | objid::bigint) = ${lockKey}
     ) AS held`,
    [slot],
  );
  return rows[0]?.held === true;
}

/**
 * The leader lock as this relay holds it: which admin connection took it, if any. `held()` answers
 * the exactly-once sink's question "do I still lead?" (SinkSession.stillLeader) without ever
 * waiting for the lock: a relay waiting for it holds nothing, and its connection is blocked in
 * pg_advisory_lock, so it answers false at once rather than queue behind that wait.
 */
export class LeaderLock {
  /** The connection whose session took the lock; null while none has (or while waiting for it). */
  private holder: pg.Client | null = null;

  constructor(
    private readonly slot: string,
    /**
     * The admin connection (AdminConnection.get): the open one, or one opened to replace one that
     * ended, on which the session takes the lock back if it is free (its onReopen calls tryTake).
     */
    private readonly connection: () => Promise<pg.Client>,
    /** How long `held()` waits for its answer before it says false. */
    private readonly answerWithinMs: number,
  ) {}

  /** tryLeaderLock on `client`; on success, `client` is the holder. */
  async tryTake(client: pg.Client): Promise<boolean> {
    this.holder = null;
    const ok = await tryLeaderLock(client, this.slot);
    if (ok) this.holder = client;
    return ok;
  }

  /** awaitLeaderLock on `client`; once it returns, `client` is the holder. */
  async await(client: pg.Client, statementTimeoutMs: number, signal: AbortSignal): Promise<void> {
    this.holder = null;
    await awaitLeaderLock(client, this.slot, statementTimeoutMs, signal);
    this.holder = client;
  }

  /**
   * True only when the server confirms, on the holder's own session, that it holds the lock now.
   * If that session ended (a network blip: the server released the lock with it), the admin
   * connection is reopened first, and its new session holds the lock only if it could take it
   * back. False when no connection took the lock (this relay waits for it, or its session
   * failed), or no answer came within `answerWithinMs`: a relay that cannot prove it leads must
   * not act as the leader.
   */
  async held(): Promise<boolean> {
    if (this.holder === null) return false;
    const answer = (async () => {
      const client = await this.connection();
      return client === this.holder && (await holdsLeaderLock(client, this.slot));
    })().catch(() => false);
    return withTimeout(answer, this.answerWithinMs, () => false);
  }
}
