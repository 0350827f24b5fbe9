import type pg from 'pg';
import { type Config, type TableConfig, quoteIdent } from '../config/config.js';
import { COLUMN_FIELDS, REQUIRED_COLUMN_FIELDS } from '../config/schema.js';
import { oneLine } from '../errors.js';
import { createLogger } from '../observability/logger.js';
import { withTimeout } from '../retry.js';
import { loadSink } from '../sink/index.js';
import { scalar } from '../postgres/sql.js';
import { connectAdmin, hostOf } from '../source/connect.js';
import { readMarker } from '../postgres/marker.js';
import { checkPublishes } from '../postgres/publication-checks.js';
import { reshardCheck, shardChecks } from './validate-shards.js';
import { checkSlotUsable, inspectSlot } from '../source/slot.js';
import type { AddCheck, Check } from './validate-check.js';
import { failoverChecks } from './validate-failover.js';

const REQUIRED: ReadonlySet<string> = new Set(REQUIRED_COLUMN_FIELDS);

/**
 * Checks the environment the way `run` will need it, without changing anything: Postgres
 * settings and privileges, the outbox tables and their mapped columns, the publication, the
 * slot, and whether the broker answers.
 */
export async function runChecks(cfg: Config): Promise<Check[]> {
  const checks: Check[] = [];
  const add: AddCheck = (name, status, detail) => checks.push({ name, status, detail });
  let client: pg.Client;
  try {
    client = await connectAdmin(cfg.postgres);
    add(
      'postgres connection',
      'ok',
      `connected as ${await scalar(client, 'SELECT current_user')} to ${await scalar(client, 'SELECT current_database()')}${cfg.postgres.hosts.length > 1 ? ` on ${hostOf(client)}` : ''} (Postgres ${await scalar(client, 'SHOW server_version')})`,
    );
  } catch (err) {
    add('postgres connection', 'fail', `${oneLine(err)} — check postgres.url, the password and pg_hba.conf`);
    await brokerCheck(cfg, add);
    return checks;
  }
  try {
    const walLevel = await scalar(client, 'SHOW wal_level');
    add(
      'wal_level',
      walLevel === 'logical' ? 'ok' : 'fail',
      walLevel === 'logical' ? 'logical' : `is ${walLevel} — set wal_level = logical in postgresql.conf and restart Postgres`,
    );

    const role = await client.query<{ replication: boolean; superuser: boolean }>(
      'SELECT rolreplication AS replication, rolsuper AS superuser FROM pg_roles WHERE rolname = current_user',
    );
    const r = role.rows[0];
    add(
      'replication privilege',
      r?.replication || r?.superuser ? 'ok' : 'fail',
      r?.replication || r?.superuser
        ? 'the role may stream logical replication'
        : 'the role lacks REPLICATION — ALTER ROLE <role> WITH REPLICATION',
    );

    for (const [i, t] of cfg.outbox.tables.entries()) await tableChecks(client, t, i, add);
    if (cfg.postgres.shard) await shardChecks(client, cfg, add);
    await reshardCheck(client, cfg, add);

    const pub = cfg.postgres.publication;
    const pubRow = await client.query<{ all: boolean; owner: boolean }>(
      "SELECT puballtables AS all, pg_has_role(pubowner, 'USAGE') AS owner FROM pg_publication WHERE pubname = $1",
      [pub],
    );
    if (pubRow.rows.length === 0) {
      // CREATE PUBLICATION ... FOR TABLE needs CREATE on the database and ownership of the tables.
      const owns = await client.query<{ ok: boolean | null }>(
        `SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) AS ok FROM pg_class c WHERE c.oid = ANY(
           SELECT to_regclass(t) FROM unnest($1::text[]) t WHERE to_regclass(t) IS NOT NULL)`,
        [cfg.outbox.tables.map((t) => t.qualified)],
      );
      const canCreate =
        (await scalar(client, "SELECT has_database_privilege(current_database(), 'CREATE')::text")) === 'true' &&
        owns.rows[0]?.ok !== false;
      add(
        'publication',
        cfg.postgres.createPublication && canCreate ? 'ok' : 'fail',
        cfg.postgres.createPublication
          ? canCreate
            ? `${pub} does not exist yet; run will create it (or run outboxd setup)`
            : `${pub} does not exist and the role may not create it (needs CREATE on the database and ownership of the outbox tables) — create it as their owner: outboxd setup --print`
          : `${pub} does not exist and postgres.createPublication is false — create it: outboxd setup --print`,
      );
    } else {
      const covered = await client.query<{ name: string }>(
        "SELECT schemaname || '.' || tablename AS name FROM pg_publication_tables WHERE pubname = $1",
        [pub],
      );
      const have = new Set(covered.rows.map((x) => x.name));
      const missing = pubRow.rows[0]?.all ? [] : cfg.outbox.tables.filter((t) => !have.has(`${t.schema}.${t.table}`));
      add(
        'publication',
        missing.length === 0 ? 'ok' : 'fail',
        missing.length === 0
          ? `${pub} covers the outbox tables`
          : `${pub} lacks ${missing.map((t) => t.qualified).join(', ')} — ALTER PUBLICATION ${quoteIdent(pub)} ADD TABLE ${missing.map((t) => t.qualified).join(', ')}`,
      );
      if (missing.length === 0) {
        try {
          await checkPublishes(client, cfg);
          add('publication content', 'ok', `${pub} sends every outbox row with every mapped column`);
        } catch (err) {
          add('publication content', 'fail', oneLine(err));
        }
      }
      if (!pubRow.rows[0]?.owner) {
        add(
          'publication owner',
          'fail',
          `the role does not own ${pub}, so outboxd cannot record its slot on it — ALTER PUBLICATION ${quoteIdent(pub)} OWNER TO <role>`,
        );
      }
    }

    const slot = await inspectSlot(client, cfg.postgres.slot);
    const marker = pubRow.rows.length > 0 ? (await readMarker(client, pub)).slots : [];
    if (slot) {
      try {
        checkSlotUsable(slot, await scalar(client, 'SELECT current_database()'));
        add(
          'replication slot',
          'ok',
          `${slot.name} exists (${slot.active ? `active, pid ${slot.activePid}` : 'inactive'}, wal_status ${slot.walStatus})`,
        );
      } catch (err) {
        add('replication slot', 'fail', oneLine(err));
      }
    } else if (marker.includes(cfg.postgres.slot)) {
      add('replication slot', 'fail', `${cfg.postgres.slot} was created by outboxd and is gone — see docs/runbook.md#lost-slot`);
    } else {
      const free = await client.query<{ free: number }>(
        "SELECT current_setting('max_replication_slots')::int - (SELECT count(*) FROM pg_replication_slots)::int AS free",
      );
      const ok = cfg.postgres.createSlot && (free.rows[0]?.free ?? 0) > 0;
      add(
        'replication slot',
        ok ? 'ok' : 'fail',
        !cfg.postgres.createSlot
          ? `${cfg.postgres.slot} does not exist and postgres.createSlot is false — outboxd setup creates it`
          : ok
            ? `${cfg.postgres.slot} does not exist yet; run will create it`
            : 'no free replication slot — raise max_replication_slots and restart Postgres',
      );
    }

    if (cfg.postgres.failover) await failoverChecks(cfg, client, add);

    const keep = await scalar(client, 'SHOW max_slot_wal_keep_size');
    add(
      'max_slot_wal_keep_size',
      keep === '-1' ? 'warn' : 'ok',
      keep === '-1'
        ? 'is -1 (unlimited): a stalled relay can fill the disk with WAL; consider a bound, and alert on outboxd_slot_retained_wal_bytes'
        : `${keep}: past this much retained WAL the slot is invalidated (outboxd then stops with exit code 4)`,
    );
  } catch (err) {
    add('postgres checks', 'fail', oneLine(err));
  } finally {
    await client.end().catch(() => undefined);
  }
  await brokerCheck(cfg, add);
  return checks;
}

async function tableChecks(client: pg.Client, t: TableConfig, index: number, add: AddCheck): Promise<void> {
  const name = `table ${t.schema}.${t.table}`;
  // pg_attribute, not information_schema: the latter hides tables the role may not read.
  const cols = await client.query<{ column_name: string; data_type: string }>(
    `SELECT a.attname AS column_name, format_type(a.atttypid, a.atttypmod) AS data_type
       FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`,
    [t.qualified],
  );
  if (cols.rows.length === 0) {
    add(name, 'fail', `does not exist (outbox.tables[${index}]) — create it: outboxd setup --print shows the DDL`);
    return;
  }
  const have = new Map(cols.rows.map((c) => [c.column_name, c.data_type]));
  const missing = COLUMN_FIELDS.filter((f) => REQUIRED.has(f) && !have.has(t.columns[f]));
  if (missing.length > 0) {
    add(name, 'fail', `lacks ${missing.map((f) => `${t.columns[f]} (${f})`).join(', ')} — map them with outbox.tables[${index}].columns`);
    return;
  }
  const select = await client.query<{ ok: boolean }>("SELECT has_table_privilege($1, 'SELECT') AS ok", [t.qualified]);
  const optional = COLUMN_FIELDS.filter((f) => !REQUIRED.has(f) && have.has(t.columns[f]));
  add(
    name,
    select.rows[0]?.ok ? 'ok' : 'fail',
    select.rows[0]?.ok
      ? `has the required columns; payload is ${have.get(t.columns.payload)}${optional.length ? `; optional: ${optional.join(', ')}` : ''}`
      : `the role lacks SELECT — GRANT SELECT ON ${t.qualified} TO <role>`,
  );
}

async function brokerCheck(cfg: Config, add: AddCheck): Promise<void> {
  if (cfg.sink.type === 'stdout') {
    add('sink', 'ok', 'stdout needs no connection');
    return;
  }
  if (cfg.sink.type === 'kafka') {
    // Loaded here, not at the top: it loads kafkajs, which every command would otherwise pay for
    // (kafkajs loads only through sink/kafka/kafkajs-internals.ts).
    const { kafkaAuthChecks } = await import('./validate-kafka-auth.js');
    if (!(await kafkaAuthChecks(cfg.sink.kafka, add))) return;
    // The codec's library loads and round-trips here, as the relay checks it at start.
    const { checkCodec } = await import('../sink/kafka/codecs.js');
    try {
      checkCodec(cfg.sink.kafka.compression);
      add(
        'kafka compression',
        'ok',
        cfg.sink.kafka.compression === 'none' ? 'none' : `${cfg.sink.kafka.compression} loads and round-trips`,
      );
    } catch (err) {
      add('kafka compression', 'fail', oneLine(err));
      return;
    }
  }
  const sink = (await loadSink(cfg.sink, cfg.postgres.slot, cfg.outbox.onPoison === 'dead-letter', createLogger('silent')))({
    connection: () => undefined,
    blocked: () => undefined,
    transaction: () => undefined,
    fenced: () => undefined,
  });
  try {
    await answerWithin(sink.connect(), 20_000);
    add(`${cfg.sink.type} broker`, 'ok', 'reachable and ready to publish');
  } catch (err) {
    add(`${cfg.sink.type} broker`, 'fail', oneLine(err));
    return;
  } finally {
    await sink.close().catch(() => undefined);
  }
  if (cfg.sink.type === 'kafka' && cfg.sink.kafka.delivery === 'exactly-once') {
    const { checkCheckpointTopic } = await import('../sink/kafka/setup.js');
    for (const c of await answerWithin(checkCheckpointTopic(cfg.sink.kafka, createLogger('silent')), 60_000)) {
      add(c.name, c.ok ? 'ok' : 'fail', c.detail);
    }
  }
}

/** `p`, or an error saying there was no answer within `ms`. */
function answerWithin<T>(p: Promise<T>, ms: number): Promise<T> {
  return withTimeout(p, ms, () => {
    throw new Error(`no answer within ${ms} ms`);
  });
}
