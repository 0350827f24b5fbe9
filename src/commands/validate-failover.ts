import type pg from 'pg';
import type { Config } from '../config/config.js';
import type { PgHost } from '../config/pg-url.js';
import { oneLine } from '../errors.js';
import { scalar, serverVersion } from '../postgres/sql.js';
import { connectHost, hostOf } from '../source/connect.js';
import { inspectSlot } from '../source/slot.js';
import type { AddCheck } from './validate-check.js';

/**
 * `validate --connect` with postgres.failover: what slot synchronisation needs (PostgreSQL 17),
 * as far as outboxd can see it. On the primary: the version, synchronized_standby_slots and the
 * physical slots it names, the standbys in pg_stat_replication, and our slot's failover flag.
 * On every other host of postgres.url that is a standby: the settings its slot sync worker
 * needs and its copy of our slot. A standby not listed in the URL is seen only through the
 * primary's views. `client` is the admin connection to the host target_session_attrs chose.
 */
export async function failoverChecks(cfg: Config, client: pg.Client, add: AddCheck): Promise<void> {
  const pgc = cfg.postgres;
  const version = await serverVersion(client);
  if (version < 170000) {
    add(
      'failover slots',
      'fail',
      `postgres.failover needs PostgreSQL 17 or later; ${hostOf(client)} runs ${Math.floor(version / 10000)}.${version % 10000}`,
    );
    return;
  }
  const labels = pgc.hosts.map((h) => h.label).join(', ');
  if (pgc.hosts.length === 1) {
    add(
      'failover hosts',
      'warn',
      `postgres.url names one host (${labels}): after a promotion outboxd finds the new primary only if that name moves to it (a DNS name or address the HA manager moves); otherwise list every host with target_session_attrs=read-write`,
    );
  } else if (pgc.targetSessionAttrs !== 'read-write' && pgc.targetSessionAttrs !== 'primary') {
    add(
      'failover hosts',
      'warn',
      `postgres.url lists ${labels} with target_session_attrs=${pgc.targetSessionAttrs}: outboxd may connect to a standby, which cannot stream the slot; use target_session_attrs=read-write`,
    );
  } else {
    add('failover hosts', 'ok', `postgres.url lists ${labels}; target_session_attrs=${pgc.targetSessionAttrs} picks the primary`);
  }

  if ((await scalar(client, 'SELECT pg_is_in_recovery()::text')) === 'true') {
    add('failover primary', 'warn', `connected to ${hostOf(client)}, a standby: the primary's side cannot be checked from here`);
    await standbyCheck(client, cfg, add);
  } else {
    await primaryChecks(client, cfg, add);
  }

  for (const host of pgc.hosts) {
    if (host.label === hostOf(client)) continue;
    await otherHostCheck(host, cfg, add);
  }
}

async function primaryChecks(client: pg.Client, cfg: Config, add: AddCheck): Promise<void> {
  const host = hostOf(client);
  const names = (await scalar(client, "SELECT current_setting('synchronized_standby_slots')"))
    .split(',')
    .map((s) => s.trim().replace(/^"(.*)"$/, '$1'))
    .filter((s) => s !== '');
  const physical = await client.query<{ slot_name: string; slot_type: string; active: boolean; feedback: boolean }>(
    `SELECT slot_name, slot_type, active, (xmin IS NOT NULL OR catalog_xmin IS NOT NULL) AS feedback FROM pg_replication_slots WHERE slot_name = ANY($1)`,
    [names],
  );
  if (names.length === 0) {
    add(
      'synchronized_standby_slots',
      'warn',
      `is empty on ${host}: outboxd may receive, and publish, transactions the standby has not yet received, which a failover then loses from the database — set it to the standbys' physical slots`,
    );
  } else {
    const found = new Map(physical.rows.map((r) => [r.slot_name, r]));
    const missing = names.filter((n) => found.get(n)?.slot_type !== 'physical');
    const inactive = names.filter((n) => found.get(n)?.slot_type === 'physical' && !found.get(n)?.active);
    const noFeedback = names.filter((n) => found.get(n)?.active && !found.get(n)?.feedback);
    const problems = [
      ...missing.map((n) => `${n} is not a physical slot on ${host} (logical decoding of failover slots waits for it forever)`),
      ...inactive.map((n) => `${n} is inactive: its standby is not streaming, and outboxd waits for it`),
      ...noFeedback.map((n) => `${n} carries no xmin from its standby: is hot_standby_feedback on there?`),
    ];
    add(
      'synchronized_standby_slots',
      missing.length > 0 ? 'fail' : problems.length > 0 ? 'warn' : 'ok',
      problems.length > 0 ? problems.join('; ') : `${names.join(', ')}: physical, active, with hot_standby_feedback`,
    );
  }

  // pg_stat_replication lists logical walsenders too (outboxd's own): keep the physical ones.
  const standbys = await client.query<{ name: string; state: string; sync_state: string }>(
    `SELECT coalesce(nullif(application_name, ''), client_addr::text, 'local') AS name, state, sync_state
       FROM pg_stat_replication
      WHERE pid NOT IN (SELECT active_pid FROM pg_replication_slots WHERE slot_type = 'logical' AND active_pid IS NOT NULL)`,
  );
  add(
    'standbys',
    standbys.rows.length > 0 ? 'ok' : 'warn',
    standbys.rows.length > 0
      ? `pg_stat_replication on ${host}: ${standbys.rows.map((r) => `${r.name} (${r.state}, ${r.sync_state})`).join(', ')}`
      : `no standby streams from ${host} (pg_stat_replication): there is nothing to fail over to, and no copy of the slot`,
  );

  const slot = await inspectSlot(client, cfg.postgres.slot);
  add(
    'failover slot',
    slot === null || slot.failover ? 'ok' : 'warn',
    slot === null
      ? `${cfg.postgres.slot} does not exist yet; run creates it with failover = true`
      : slot.failover
        ? `${slot.name} has failover = true on ${host}`
        : `${slot.name} has failover = false on ${host}: run enables it (ALTER_REPLICATION_SLOT ... (FAILOVER true)); until then no standby keeps a copy`,
  );
}

async function otherHostCheck(host: PgHost, cfg: Config, add: AddCheck): Promise<void> {
  let other: pg.Client;
  try {
    other = await connectHost(cfg.postgres, host, { statement_timeout: cfg.postgres.statementTimeoutMs });
  } catch (err) {
    add(`host ${host.label}`, 'warn', `unreachable: ${oneLine(err)}`);
    return;
  }
  try {
    if ((await scalar(other, 'SELECT pg_is_in_recovery()::text')) === 'true') await standbyCheck(other, cfg, add);
    else add(`host ${host.label}`, 'warn', 'is a primary too (not in recovery): two writable servers in one URL');
  } catch (err) {
    add(`standby ${host.label}`, 'fail', oneLine(err));
  } finally {
    await other.end().catch(() => undefined);
  }
}

/** One line for a standby: the settings the slot sync worker needs, and its copy of our slot. */
async function standbyCheck(client: pg.Client, cfg: Config, add: AddCheck): Promise<void> {
  const name = `standby ${hostOf(client)}`;
  const { rows } = await client.query<{ sync: string; feedback: string; slot: string; wal_level: string }>(
    `SELECT current_setting('sync_replication_slots') AS sync, current_setting('hot_standby_feedback') AS feedback,
            current_setting('primary_slot_name') AS slot, current_setting('wal_level') AS wal_level`,
  );
  const s = rows[0];
  const missing = [
    s?.sync !== 'on' && 'sync_replication_slots = on',
    s?.feedback !== 'on' && 'hot_standby_feedback = on',
    !s?.slot && 'primary_slot_name',
    s?.wal_level !== 'logical' && 'wal_level = logical',
  ].filter((x): x is string => typeof x === 'string');
  // primary_conninfo is readable only with pg_read_all_settings; the slot sync worker needs its dbname.
  const conninfo = await scalar(client, "SELECT current_setting('primary_conninfo', true)").catch(() => '');
  if (conninfo !== '' && conninfo !== 'null' && !/\bdbname\s*=/.test(conninfo)) missing.push('dbname= in primary_conninfo');
  const copy = await client.query<{ synced: boolean; temporary: boolean; confirmed: string | null; invalid: string | null }>(
    `SELECT synced, temporary, confirmed_flush_lsn::text AS confirmed, invalidation_reason AS invalid FROM pg_replication_slots WHERE slot_name = $1`,
    [cfg.postgres.slot],
  );
  const c = copy.rows[0];
  const slotState =
    c === undefined
      ? `no copy of ${cfg.postgres.slot} yet`
      : c.invalid
        ? `its copy of ${cfg.postgres.slot} is invalidated (${c.invalid})`
        : !c.synced
          ? `${cfg.postgres.slot} exists there but is not a synchronised copy`
          : c.temporary
            ? `its copy of ${cfg.postgres.slot} is not yet persistent (it waits for the primary's slot to pass the standby's position)`
            : null;
  const status = missing.length > 0 || (c?.invalid ?? null) !== null ? 'fail' : slotState !== null ? 'warn' : 'ok';
  add(
    name,
    status,
    [
      missing.length > 0 ? `set ${missing.join(', ')}` : 'sync_replication_slots, hot_standby_feedback and primary_slot_name set',
      slotState ?? `${cfg.postgres.slot} synchronised, confirmed up to ${c?.confirmed ?? 'nothing yet'}`,
    ].join('; '),
  );
}
