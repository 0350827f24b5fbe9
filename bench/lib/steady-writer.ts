import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { sleep } from './log.js';

/**
 * Writes `total` one-row transactions into `table` at `rate` per second over `clients`, open
 * loop: row i is due at start + i/rate, and writers that fall behind catch up without pause (the
 * latency and soak scenarios). `onReturn` hears each INSERT's id when its commit has returned.
 * Resolves with the start and the last return (performance.now() times).
 */
export async function writeSteadily(
  clients: readonly pg.Client[],
  table: string,
  rate: number,
  total: number,
  onReturn: (id: string, atMs: number) => void,
): Promise<{ start: number; lastReturn: number }> {
  const pad = 'x'.repeat(220);
  const start = performance.now() + 50;
  const intervalMs = 1000 / rate;
  let next = 0;
  let lastReturn = start;
  const writer = async (client: pg.Client): Promise<void> => {
    for (;;) {
      const i = next++;
      if (i >= total) return;
      const wait = start + i * intervalMs - performance.now();
      if (wait > 1) await sleep(wait);
      const id = randomUUID();
      const key = `key-${i % 10_000}`;
      await client.query({
        name: 'bench-insert',
        text: `INSERT INTO ${table} (id, aggregatetype, aggregateid, type, payload) VALUES ($1, 'order', $2, 'created', $3)`,
        values: [id, key, `{"seq": ${i}, "orderId": "${key}", "currency": "EUR", "amount": ${(i % 10_000) / 100}, "note": "${pad}"}`],
      });
      lastReturn = performance.now();
      onReturn(id, lastReturn);
    }
  };
  await Promise.all(clients.map((c) => writer(c)));
  return { start, lastReturn };
}
