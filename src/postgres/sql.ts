import type pg from 'pg';

/** Small queries any part of outboxd asks of a plain (admin) connection. */

const versions = new WeakMap<pg.Client, number>();
export async function serverVersion(client: pg.Client): Promise<number> {
  const known = versions.get(client);
  if (known !== undefined) return known;
  const { rows } = await client.query<{ v: string }>(`SELECT current_setting('server_version_num') AS v`);
  const v = Number(rows[0]?.v ?? 0);
  versions.set(client, v);
  return v;
}

/** The first column of the first row, as text ('' when there is no row). */
export async function scalar(client: pg.Client, sql: string): Promise<string> {
  const { rows } = await client.query<Record<string, unknown>>(sql);
  const first = rows[0];
  return first ? String(Object.values(first)[0]) : '';
}
