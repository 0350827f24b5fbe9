import type { Config, TableConfig } from '../config/config.js';
import { ExitCode, exitCodeFor, oneLine } from '../errors.js';
import { connectAdmin } from '../source/connect.js';
import { createLogger } from '../observability/logger.js';
import { ensurePublication } from '../source/publication.js';
import { ensureSlot } from '../source/slot.js';
import { quoteIdent } from '../config/config.js';

/** The outbox table DDL for a table's column mapping (Debezium outbox event router layout). */
export function outboxDdl(t: TableConfig): string {
  const c = t.columns;
  const q = quoteIdent;
  return `CREATE TABLE IF NOT EXISTS ${t.qualified} (
  ${q(c.id)} uuid PRIMARY KEY DEFAULT gen_random_uuid(),  -- message id; consumers dedupe on it
  ${q(c.aggregatetype)} text NOT NULL,                      -- picks the destination (topic / routing key)
  ${q(c.aggregateid)} text NOT NULL,                        -- shard key: Kafka key, per-key order
  ${q(c.type)} text,                                        -- event type
  ${q(c.payload)} jsonb NOT NULL,                           -- the body, byte for byte (json, text or bytea work too)
  ${q(c.headers)} jsonb,                                    -- extra headers: a JSON object
  ${q(c.correlation_id)} text,
  ${q(c.causation_id)} text,
  ${q(c.reply_to)} text,
  ${q(c.traceparent)} text,
  created_at timestamptz NOT NULL DEFAULT now()
);
-- outboxd reads inserts from the WAL, so rows may be deleted right away (even in the same
-- transaction) or by a periodic cleanup job; updates and deletes are ignored.`;
}

/** The SQL `setup` runs, for `--print`. */
export function setupSql(cfg: Config): string {
  const pub = cfg.postgres.publication;
  const tables = cfg.outbox.tables.map((t) => t.qualified).join(', ');
  return [
    `CREATE PUBLICATION ${pub}${tables ? ` FOR TABLE ${tables}` : ''} WITH (publish = 'insert');`,
    `COMMENT ON PUBLICATION ${pub} IS 'outboxd:{"slots":["${cfg.postgres.slot}"]}';  -- lets outboxd tell a lost slot from a first start`,
    `SELECT pg_create_logical_replication_slot('${cfg.postgres.slot}', 'pgoutput');`,
  ].join('\n');
}

/** `outboxd setup [--print]`. */
export async function setupCommand(cfg: Config, print: boolean, out: NodeJS.WritableStream): Promise<number> {
  out.write('-- outbox table(s) for this config:\n');
  for (const t of cfg.outbox.tables) out.write(`${outboxDdl(t)}\n\n`);
  if (print) {
    out.write(`-- publication and slot:\n${setupSql(cfg)}\n`);
    return ExitCode.ok;
  }
  const client = await connectAdmin({ ...cfg.postgres });
  try {
    const pub = await ensurePublication(client, { ...cfg, postgres: { ...cfg.postgres, createPublication: true } });
    out.write(`-- publication ${cfg.postgres.publication}: ${pub}\n`);
    const { slot, created } = await ensureSlot(client, { ...cfg.postgres, createSlot: true });
    out.write(`-- replication slot ${slot.name}: ${created ? 'created' : 'exists'}\n`);
    if (cfg.sink.type === 'kafka' && cfg.sink.kafka.delivery === 'exactly-once') {
      const { ensureCheckpointTopic } = await import('../sink/kafka-setup.js');
      const topic = await ensureCheckpointTopic(cfg.sink.kafka, createLogger('silent'));
      out.write(`-- checkpoint topic ${cfg.sink.kafka.checkpointTopic}: ${topic}\n`);
    }
    return ExitCode.ok;
  } catch (err) {
    out.write(`-- failed: ${oneLine(err)}\n`);
    process.stderr.write(`outboxd: ${oneLine(err)}\n`);
    return exitCodeFor(err);
  } finally {
    await client.end().catch(() => undefined);
  }
}
