import pg from 'pg';
import { sleep } from './log.js';

export type Lsn = bigint;

export function parseLsn(text: string): Lsn {
  const [hi, lo] = text.split('/');
  return (BigInt(`0x${hi}`) << 32n) | BigInt(`0x${lo}`);
}

export function formatLsn(lsn: Lsn): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`;
}

export async function connect(url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url, application_name: 'outboxd-bench' });
  client.on('error', () => undefined);
  await client.connect();
  return client;
}

export async function currentLsn(client: pg.Client): Promise<Lsn> {
  const { rows } = await client.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return parseLsn(rows[0]?.lsn ?? '0/0');
}

export interface SlotState {
  confirmed: Lsn | null;
  activePid: number | null;
}

export async function slotState(client: pg.Client, slot: string): Promise<SlotState | null> {
  const { rows } = await client.query<{ c: string | null; pid: number | null }>(
    'SELECT confirmed_flush_lsn::text AS c, active_pid AS pid FROM pg_replication_slots WHERE slot_name = $1',
    [slot],
  );
  const r = rows[0];
  if (!r) return null;
  return { confirmed: r.c ? parseLsn(r.c) : null, activePid: r.pid };
}

/** A fresh copy of a template slot: same plugin, same position, so it reads the same backlog. */
export async function copySlot(client: pg.Client, template: string, copy: string): Promise<void> {
  await client.query('SELECT pg_copy_logical_replication_slot($1, $2)', [template, copy]);
}

/** Drops a slot, first ending whatever still streams from it. */
export async function dropSlot(client: pg.Client, slot: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const s = await slotState(client, slot);
    if (!s) return;
    if (s.activePid === null) {
      try {
        await client.query('SELECT pg_drop_replication_slot($1)', [slot]);
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== '55006') throw err;
      }
    } else if (i > 20) {
      await client.query('SELECT pg_terminate_backend($1)', [s.activePid]);
    }
    await sleep(100);
  }
  throw new Error(`slot ${slot} stays active; cannot drop it`);
}
