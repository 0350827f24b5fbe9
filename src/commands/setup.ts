import { type Config, type TableConfig, allShards } from '../config/config.js';
import { ExitCode, exitCodeFor, oneLine } from '../errors.js';
import { connectAdmin } from '../source/connect.js';
import { createLogger } from '../observability/logger.js';
import { ensurePublication, publicationTables } from '../postgres/publication.js';
import { ensureSlot } from '../source/ensure-slot.js';
import { quoteIdent } from '../config/config.js';
import { partitionName } from '../postgres/prune-partitions.js';

/**
 * The outbox table DDL for a table's column mapping (Debezium outbox event router layout), with
 * the index pruning and replay use. `partitioned`: by day on the created-at column, with the
 * partitions from today to `premake` days ahead and a default partition as a safety net (the
 * relay keeps partitions created ahead when `outbox.prune.mode` is `partitions`).
 */
export function outboxDdl(t: TableConfig, partitioned?: { premake: number; now?: Date }): string {
  const c = t.columns;
  const q = quoteIdent;
  const created = q(t.createdAt);
  // A partitioned table's primary key must contain its partition key.
  const key = partitioned ? ' NOT NULL DEFAULT gen_random_uuid()' : ' PRIMARY KEY DEFAULT gen_random_uuid()';
  const lines = `CREATE TABLE IF NOT EXISTS ${t.qualified} (
  ${q(c.id)} uuid${key},  -- message id; consumers dedupe on it
  ${q(c.aggregatetype)} text NOT NULL,                      -- picks the destination (topic / routing key)
  ${q(c.aggregateid)} text NOT NULL,                        -- shard key: Kafka key, per-key order
  ${q(c.type)} text,                                        -- event type
  ${q(c.payload)} jsonb NOT NULL,                           -- the body, byte for byte (json, text or bytea work too)
  ${q(c.headers)} jsonb,                                    -- extra headers: a JSON object
  ${q(c.correlation_id)} text,
  ${q(c.causation_id)} text,
  ${q(c.reply_to)} text,
  ${q(c.traceparent)} text,
  ${created} timestamptz NOT NULL DEFAULT now()${
    partitioned
      ? `,
  PRIMARY KEY (${q(c.id)}, ${created})`
      : ''
  }
)${partitioned ? ` PARTITION BY RANGE (${created})` : ''};
CREATE INDEX IF NOT EXISTS ${q(`${t.table}_${t.createdAt}_idx`)} ON ${t.qualified} (${created});  -- pruning and replay`;
  if (!partitioned) {
    return `${lines}
-- outboxd reads inserts from the WAL, so rows may be deleted right away (even in the same
-- transaction), by outboxd's pruning (outbox.prune) or by a cleanup job; updates and deletes are ignored.`;
  }
  const now = partitioned.now ?? new Date();
  const today = Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate());
  const parts: string[] = [];
  for (let d = 0; d <= partitioned.premake; d++) {
    const from = today + d * 86_400_000;
    parts.push(
      `CREATE TABLE IF NOT EXISTS ${partitionName(t, from)} PARTITION OF ${t.qualified} FOR VALUES FROM ('${new Date(from).toISOString()}') TO ('${new Date(from + 86_400_000).toISOString()}');`,
    );
  }
  return `${lines}
-- Daily partitions (UTC) from today; with outbox.prune.mode: partitions the relay keeps
-- prune.premake days created ahead and drops whole partitions once confirmed and past retain.
${parts.join('\n')}
-- Catches rows no daily partition covers (the relay was down longer than premake days); pruned row by row.
CREATE TABLE IF NOT EXISTS ${q(t.schema)}.${q(`${t.table}_default`)} PARTITION OF ${t.qualified} DEFAULT;`;
}

/** The SQL `setup` runs, for `--print`: with postgres.shard, every shard's publication and slot. */
export function setupSql(cfg: Config): string {
  return allShards(cfg).map(shardSetupSql).join('\n');
}

function shardSetupSql(cfg: Config): string {
  const pub = cfg.postgres.publication;
  const shard = cfg.postgres.shard;
  return [
    ...(shard ? [`-- shard ${shard.index} of ${shard.count}: the keys whose hash is ${shard.index} (docs/adr/0020-shards.md)`] : []),
    `CREATE PUBLICATION ${quoteIdent(pub)}${publicationTables(cfg)} WITH (publish = 'insert', publish_via_partition_root = true);`,
    `COMMENT ON PUBLICATION ${quoteIdent(pub)} IS 'outboxd:{"slots":["${cfg.postgres.slot}"]}';  -- lets outboxd tell a lost slot from a first start`,
    // (slot, plugin, temporary, two-phase, failover): a failover slot when postgres.failover is set.
    `SELECT pg_create_logical_replication_slot('${cfg.postgres.slot}', 'pgoutput'${cfg.postgres.failover ? ', false, false, true' : ''});`,
  ].join('\n');
}

/** `outboxd setup [--print]`. */
export async function setupCommand(cfg: Config, print: boolean, out: NodeJS.WritableStream, partitioned = false): Promise<number> {
  out.write('-- outbox table(s) for this config:\n');
  const byDay = partitioned ? { premake: cfg.outbox.prune.premake } : undefined;
  for (const t of cfg.outbox.tables) out.write(`${outboxDdl(t, byDay)}\n\n`);
  if (print) {
    out.write(`-- publication and slot:\n${setupSql(cfg)}\n`);
    return ExitCode.ok;
  }
  const client = await connectAdmin({ ...cfg.postgres });
  try {
    for (const shard of allShards(cfg)) {
      const pub = await ensurePublication(client, { ...shard, postgres: { ...shard.postgres, createPublication: true } });
      out.write(`-- publication ${shard.postgres.publication}: ${pub}\n`);
      // A lost slot is for `run` to recover (onLostSlot), not for setup: `exit` makes it an error here.
      const { slot, created, recovery } = await ensureSlot(client, { ...shard.postgres, createSlot: true, onLostSlot: 'exit' });
      // A recovery a crash interrupted is recorded: setup made its slot again; `run` publishes its rows.
      await recovery?.snapshot.release();
      out.write(
        `-- replication slot ${slot.name}: ${created ? 'created' : 'exists'}${recovery ? ' (a lost-slot recovery is recorded: outboxd run finishes it before streaming)' : ''}\n`,
      );
    }
    if (cfg.sink.type === 'kafka' && cfg.sink.kafka.delivery === 'exactly-once') {
      const { ensureCheckpointTopic } = await import('../sink/kafka/setup.js');
      const { detail } = await ensureCheckpointTopic(cfg.sink.kafka, createLogger('silent'));
      out.write(`-- checkpoint topic ${cfg.sink.kafka.checkpointTopic}: ${detail}\n`);
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
