import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { pgUrl } from '../harness/services.js';
import { LeaderLock, holdsLeaderLock, tryLeaderLock } from '../../src/postgres/leader.js';

/** A connection of its own to the PostgreSQL 15 test server; `await using` ends it. */
async function connect(): Promise<pg.Client & AsyncDisposable> {
  const client = new pg.Client({ connectionString: await pgUrl(15) });
  client.on('error', () => undefined);
  await client.connect();
  return Object.assign(client, { [Symbol.asyncDispose]: () => client.end().catch(() => undefined) });
}

describe('the leader lock as the exactly-once sink asks it (issue 21, finding 7)', () => {
  it('held() is true only on the session that took the lock, false for a relay that waits or whose session ended, true again once it took the lock back', async () => {
    const slot = `lock_${Date.now()}`;
    await using mine = await connect();
    await using other = await connect();
    let admin: pg.Client = mine;
    const lock = new LeaderLock(slot, async () => admin, 2_000);
    expect(await lock.held()).toBe(false);
    expect(await lock.tryTake(mine)).toBe(true);
    expect(await lock.held()).toBe(true);
    expect(await holdsLeaderLock(other, slot)).toBe(false);
    // Another relay cannot take it, and a second lock of ours would not make it ours twice.
    expect(await tryLeaderLock(other, slot)).toBe(false);
    const otherLock = new LeaderLock(slot, async () => other, 2_000);
    expect(await otherLock.tryTake(other)).toBe(false);
    expect(await otherLock.held()).toBe(false);
    // Our session ends (terminated, as a network cut would): the server releases the lock; the
    // other relay takes it, and we do not hold it, whatever connection answers.
    const { rows } = await mine.query<{ pid: number }>('SELECT pg_backend_pid() AS pid');
    await other.query('SELECT pg_terminate_backend($1)', [rows[0]?.pid]);
    await expect(mine.query('SELECT 1')).rejects.toThrow();
    expect(await lock.held()).toBe(false);
    expect(await otherLock.tryTake(other)).toBe(true);
    await using again = await connect();
    admin = again;
    expect(await lock.tryTake(again)).toBe(false);
    expect(await lock.held()).toBe(false);
    // The other relay's session ends; ours takes the lock back.
    await other.end();
    expect(await lock.tryTake(again)).toBe(true);
    expect(await lock.held()).toBe(true);
  });

  it('finds its own lock whatever the key’s sign (pg_locks shows a bigint key as two unsigned halves)', async () => {
    await using client = await connect();
    const signs = new Set<string>();
    for (let i = 0; i < 16; i++) {
      const slot = `sign_${i}_${Date.now()}`;
      const { rows } = await client.query<{ k: string }>(`SELECT hashtextextended('outboxd.slot.' || $1, 0)::text AS k`, [slot]);
      signs.add(rows[0]?.k.startsWith('-') ? 'negative' : 'positive');
      expect(await holdsLeaderLock(client, slot)).toBe(false);
      expect(await tryLeaderLock(client, slot)).toBe(true);
      expect(await holdsLeaderLock(client, slot), slot).toBe(true);
    }
    expect(signs).toEqual(new Set(['negative', 'positive']));
  });
});
