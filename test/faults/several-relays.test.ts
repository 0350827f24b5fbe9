import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { EMPTY_MARKER, parseMarker, updateMarker, withEpoch, withSlot } from '../../src/postgres/marker.js';
import { MAIN, RelayProcess, type TestDb, until, writeConfig, writeOutbox } from '../integration/support.js';
import { type Bundle, bundle, markerOf, waitDelivered } from './fixtures.js';

/**
 * Several relays on one outbox (issue 21, finding 1): one to Kafka (the bundle's) and one to
 * stdout, each with its own slot on the same publication, as the runbook describes. An epoch
 * belongs to a slot: each relay's lost-slot recovery starts from its own, and pruning deletes only
 * what every recorded slot has confirmed. Real Postgres and Kafka, the relays as processes.
 */

/** A second relay on the bundle's database and publication: its own slot, the stdout sink. */
async function secondRelay(b: Bundle, slot: string, outboxExtra: string) {
  const cfg = await writeConfig(
    (port) => `postgres:
  url: ${b.db.url}
  slot: ${slot}
  statusInterval: 1s
  heartbeat:
    interval: 1s
  connectTimeout: 2s
  reconnect: { initial: 100ms, max: 1s }
  onLostSlot: recover-from-outbox
outbox:
  tables:
    - name: public.outbox
${outboxExtra}sink:
  type: stdout
http:
  host: 127.0.0.1
  port: ${port}
`,
  );
  return {
    cfg,
    start: () => new RelayProcess(cfg.file, cfg.port),
    [Symbol.asyncDispose]: () => cfg[Symbol.asyncDispose](),
  };
}

/** The ids a stdout relay printed. */
function printed(r: RelayProcess): Set<string> {
  const ids = new Set<string>();
  for (const line of r.stdout.split('\n')) if (line.startsWith('{')) ids.add((JSON.parse(line) as { id: string }).id);
  return ids;
}

async function stop(r: RelayProcess): Promise<void> {
  r.kill('SIGTERM');
  expect(await r.exited).toBe(0);
}

async function dropSlot(db: TestDb, slot: string): Promise<void> {
  await db.client.query('SELECT pg_drop_replication_slot($1)', [slot]);
}

async function rowsLeft(db: TestDb, ids: readonly string[]): Promise<number> {
  const { rows } = await db.client.query<{ n: string }>('SELECT count(*) AS n FROM public.outbox WHERE id = ANY($1::uuid[])', [ids]);
  return Number(rows[0]?.n);
}

const EPOCHS = '  prune:\n    mode: off\n    interval: 300ms\n';
const PRUNING = '  prune:\n    mode: delete\n    retain: 0s\n    interval: 300ms\n';

describe('several relays on one outbox, each with its own slot', () => {
  it("a relay's lost-slot recovery starts from its own epoch: rows only the other relay confirmed are published again", async () => {
    await using b = await bundle({ kind: 'kafka', postgresExtra: '  onLostSlot: recover-from-outbox\n', outboxExtra: EPOCHS });
    const slotB = `${b.db.slot}_b`;
    await using second = await secondRelay(b, slotB, EPOCHS);
    const a = b.start();
    let relayB = second.start();
    await Promise.all([a.ready(), relayB.ready()]);
    await until('both slots record an epoch', async () => (await markerOf(b)).epochs.size === 2, 30_000, 100);

    // B stops; A relays 100 rows and confirms them, its epoch passing them.
    await stop(relayB);
    const epochB = (await markerOf(b)).epochs.get(slotB)?.xid;
    const rows = await writeOutbox(b.db.client, { total: 100, keys: 10, types: b.types });
    const ids = rows.map((r) => r.id);
    await waitDelivered(b.reader, ids);
    const { rows: maxXmin } = await b.db.client.query<{ x: string }>(`SELECT max(xmin::text::bigint)::text AS x FROM public.outbox`);
    await until(
      "A's epoch passes the rows",
      async () => BigInt((await markerOf(b)).epochs.get(b.db.slot)?.xid ?? '0') > BigInt(maxXmin[0]?.x ?? '0'),
      30_000,
      100,
    );
    // B's epoch stayed where B left it.
    expect((await markerOf(b)).epochs.get(slotB)?.xid).toBe(epochB);

    // B's slot is lost while it is down; B recovers from the outbox.
    await dropSlot(b.db, slotB);
    relayB = second.start();
    await until('B recovered', async () => relayB.stderr.includes('lost-slot recovery done'), 60_000, 100);
    const got = printed(relayB);
    const missing = ids.filter((id) => !got.has(id));
    expect(missing, `B's recovery published ${ids.length - missing.length} of the ${ids.length} rows it never delivered`).toEqual([]);
    expect((await markerOf(b)).recoveries.size).toBe(0);
    await stop(relayB);
    await stop(a);
  });

  it('pruning waits for every recorded slot, names the one holding it back, and `outboxd retire` forgets a relay for good', async () => {
    await using b = await bundle({ kind: 'kafka', outboxExtra: PRUNING });
    const slotB = `${b.db.slot}_b`;
    await using second = await secondRelay(b, slotB, PRUNING);
    const a = b.start();
    let relayB = second.start();
    await Promise.all([a.ready(), relayB.ready()]);
    await until('both slots record an epoch', async () => (await markerOf(b)).epochs.size === 2, 30_000, 100);

    // B stops: A alone confirms these rows, which B has never delivered.
    await stop(relayB);
    const rows = await writeOutbox(b.db.client, { total: 50, keys: 5, types: b.types });
    const ids = rows.map((r) => r.id);
    await waitDelivered(b.reader, ids);
    await until(
      'A names slot B as holding pruning back',
      async () => (await a.metric('outboxd_prune_held_by', { slot: slotB })) === 1,
      30_000,
      100,
    );
    expect(a.stderr).toContain(`confirmed epoch of slot ${slotB}`);
    // Several of A's epochs pass; nothing B has not confirmed goes.
    const passed = BigInt((await markerOf(b)).epochs.get(b.db.slot)?.xid ?? '0');
    await until(
      'two more of A’s epochs',
      async () => BigInt((await markerOf(b)).epochs.get(b.db.slot)?.xid ?? '0') > passed + 1n,
      30_000,
      100,
    );
    expect(await rowsLeft(b.db, ids)).toBe(ids.length);

    // B comes back, streams the rows from its slot, confirms them: now they go.
    relayB = second.start();
    await relayB.ready();
    await until('B delivered them', async () => ids.every((id) => printed(relayB).has(id)), 60_000, 100);
    await until('pruned once both confirmed', async () => (await rowsLeft(b.db, ids)) === 0, 60_000, 200);

    // B is gone for good: while it is recorded, A's pruning waits for it.
    await stop(relayB);
    const more = (await writeOutbox(b.db.client, { total: 20, keys: 2, types: b.types })).map((r) => r.id);
    await waitDelivered(b.reader, more);
    const before = BigInt((await markerOf(b)).epochs.get(b.db.slot)?.xid ?? '0');
    await until(
      'A passes more epochs',
      async () => BigInt((await markerOf(b)).epochs.get(b.db.slot)?.xid ?? '0') > before + 1n,
      30_000,
      100,
    );
    expect(await rowsLeft(b.db, more)).toBe(more.length);
    // The explicit step: B's slot and epoch go; A prunes alone from then on.
    const retire = spawnSync(process.execPath, [MAIN, 'retire', '-c', second.cfg.file], { encoding: 'utf8' });
    expect(retire.stderr).toBe('');
    expect(retire.stdout).toMatch(new RegExp(`^retired slot ${slotB}: dropped the replication slot`));
    expect(retire.status).toBe(0);
    expect((await markerOf(b)).slots).toEqual([b.db.slot]);
    expect((await b.db.client.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [slotB])).rows).toHaveLength(0);
    await until('pruned once B is retired', async () => (await rowsLeft(b.db, more)) === 0, 30_000, 200);
    await stop(a);
  });

  it('`outboxd retire` refuses while an instance of the relay runs, and when there is nothing to retire', async () => {
    await using b = await bundle({ kind: 'kafka' });
    const a = b.start();
    await a.ready();
    const busy = spawnSync(process.execPath, [MAIN, 'retire', '-c', b.configFile], { encoding: 'utf8' });
    expect(busy.status).toBe(1);
    expect(busy.stderr).toMatch(/a relay of slot \S+ is running or waiting as a standby/);
    await stop(a);
    const nothing = spawnSync(process.execPath, [MAIN, 'retire', '-c', b.configFile, '--slot', 'never_was'], { encoding: 'utf8' });
    expect(nothing.status).toBe(1);
    expect(nothing.stderr).toMatch(/slot never_was neither exists nor is recorded on publication outboxd: nothing to retire/);
  });

  it('changes to the marker are atomic: 8 writers recording their own epochs 25 times each lose none of them', async () => {
    await using b = await bundle({ kind: 'kafka' });
    await b.db.client.query('CREATE PUBLICATION outboxd FOR TABLE public.outbox');
    const { Client } = (await import('pg')).default;
    const writers = await Promise.all(
      Array.from({ length: 8 }, async () => {
        const c = new Client({ connectionString: b.db.url });
        await c.connect();
        return c;
      }),
    );
    try {
      await Promise.all(
        writers.map(async (c, w) => {
          for (let i = 1; i <= 25; i++)
            await updateMarker(c, 'outboxd', (m) => withEpoch(withSlot(m, `w${w}`), `w${w}`, { xid: String(i), since: '', at: '' }));
        }),
      );
    } finally {
      await Promise.all(writers.map((c) => c.end()));
    }
    const m = await markerOf(b);
    expect(m.slots).toEqual(Array.from({ length: 8 }, (_, w) => `w${w}`));
    for (let w = 0; w < 8; w++) expect(m.epochs.get(`w${w}`)?.xid).toBe('25');
    // A comment someone else wrote is not a marker: read as empty, never half-understood.
    await b.db.client.query(`COMMENT ON PUBLICATION outboxd IS 'owned by the platform team'`);
    const { rows } = await b.db.client.query<{ c: string }>(
      `SELECT obj_description(oid, 'pg_publication') AS c FROM pg_publication WHERE pubname = 'outboxd'`,
    );
    expect(parseMarker(rows[0]?.c).marker).toEqual(EMPTY_MARKER);
  });
});
