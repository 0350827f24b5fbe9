import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { CountingHistogram } from './counting-histogram.js';
import { VERSION } from '../version.js';

/**
 * Every metric outboxd exports, in one place. Names follow Prometheus conventions: prefix
 * `outboxd_`, base units, `_total` for counters. Labels stay low-cardinality: destination is
 * the topic or routing key (bounded by the aggregate types), never a key or an id.
 * `docs/metrics.md` documents each one.
 */
export function createMetrics(registry = new Registry(), labels: { readonly shard?: number } = {}) {
  const r = [registry];
  // postgres.shard: every series carries the shard, so one shard's lag or poison shows as its own.
  if (labels.shard !== undefined) registry.setDefaultLabels({ shard: String(labels.shard) });
  /**
   * Values read at scrape time instead of on the hot path: components register these probes and
   * the gauges/counters below call them when Prometheus scrapes.
   */
  const probes: Probes = {};
  collectDefaultMetrics({ register: registry, prefix: 'outboxd_' });
  const m = {
    registry,
    probes,
    buildInfo: new Gauge({
      name: 'outboxd_build_info',
      help: 'Always 1; labels carry the outboxd and Node.js versions.',
      labelNames: ['version', 'node'],
      registers: r,
    }),
    messagesReceived: new Counter({
      name: 'outboxd_messages_received_total',
      help: 'Outbox messages read from the WAL and mapped, per destination.',
      labelNames: ['destination'],
      registers: r,
      collect() {
        probes.flushReceived?.();
      },
    }),
    messagesPublished: new Counter({
      name: 'outboxd_messages_published_total',
      help: 'Outbox messages confirmed by the broker, per destination.',
      labelNames: ['destination'],
      registers: r,
    }),
    changesIgnored: new Counter({
      name: 'outboxd_changes_ignored_total',
      help: 'Changes that produce no message: updates, deletes, truncates, rows of unconfigured tables, foreign logical messages.',
      labelNames: ['kind'],
      registers: r,
      collect() {
        probes.flushIgnored?.();
      },
    }),
    publishErrors: new Counter({
      name: 'outboxd_publish_errors_total',
      help: 'Failed publish attempts, by reason. Retriable ones are retried with backoff.',
      labelNames: ['reason'],
      registers: r,
    }),
    publishDuration: new Histogram({
      name: 'outboxd_publish_duration_seconds',
      help: 'Time from handing a batch to the broker until it confirmed the batch.',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers: r,
    }),
    // Observed once per event: counted without prom-client's per-call garbage (counting-histogram.ts).
    commitToAck: new CountingHistogram({
      name: 'outboxd_commit_to_ack_seconds',
      help: 'Time from the Postgres commit of a message to the broker confirming it (end-to-end latency).',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300],
      registers: r,
    }),
    batchSize: new Histogram({
      name: 'outboxd_batch_messages',
      help: 'Messages per batch handed to the broker.',
      buckets: [1, 10, 50, 100, 250, 500, 1000, 2000, 5000],
      registers: r,
    }),
    inFlightMessages: new Gauge({
      name: 'outboxd_inflight_messages',
      help: 'Messages read from the WAL and not yet confirmed by the broker.',
      registers: r,
      collect() {
        if (probes.inFlightMessages) this.set(probes.inFlightMessages());
      },
    }),
    inFlightBytes: new Gauge({
      name: 'outboxd_inflight_bytes',
      help: 'Bytes of messages read from the WAL and not yet confirmed by the broker.',
      registers: r,
      collect() {
        if (probes.inFlightBytes) this.set(probes.inFlightBytes());
      },
    }),
    backpressurePauses: new Counter({
      name: 'outboxd_backpressure_pauses_total',
      help: 'Times WAL reading paused because the in-flight bound was full.',
      registers: r,
    }),
    confirmedLsn: new Gauge({
      name: 'outboxd_confirmed_lsn',
      help: 'The LSN last confirmed to Postgres (the watermark), as a number.',
      registers: r,
      collect() {
        if (probes.confirmedLsn) this.set(Number(probes.confirmedLsn()));
      },
    }),
    replicationLag: new Gauge({
      name: 'outboxd_replication_lag_bytes',
      help: "Bytes of WAL between the server's current position and the slot's confirmed_flush_lsn.",
      registers: r,
    }),
    retainedWal: new Gauge({
      name: 'outboxd_slot_retained_wal_bytes',
      help: "Bytes of WAL the server keeps for the slot (current position minus the slot's restart_lsn).",
      registers: r,
    }),
    slotWalStatus: new Gauge({
      name: 'outboxd_slot_wal_status',
      help: "1 for the slot's current wal_status (reserved, extended, unreserved, lost).",
      labelNames: ['status'],
      registers: r,
    }),
    connectionState: new Gauge({
      name: 'outboxd_connection_up',
      help: '1 when the connection to the target is up, else 0.',
      labelNames: ['target'],
      registers: r,
    }),
    stuck: new Gauge({
      name: 'outboxd_stuck',
      help: "Set to 1 while the slot's confirmed position has not moved for postgres.progressTimeout although the server's WAL is ahead of it.",
      registers: r,
    }),
    confirmedUnchanged: new Gauge({
      name: 'outboxd_confirmed_unchanged_seconds',
      help: "How long the slot's confirmed position has not moved while the server's WAL is ahead of it; 0 while it moves or is caught up.",
      registers: r,
    }),
    sinkStalled: new Gauge({
      name: 'outboxd_sink_stalled',
      help: 'Set to 1 while a call to the broker has waited longer than sink.stallTimeout for its answer.',
      registers: r,
    }),
    destinationMissing: new Gauge({
      name: 'outboxd_destination_missing',
      help: 'Set to 1 while the broker says a destination (Kafka topic) does not exist; publishing waits and retries.',
      labelNames: ['destination'],
      registers: r,
    }),
    brokerBlocked: new Gauge({
      name: 'outboxd_broker_blocked',
      help: '1 while the broker blocks publishing (RabbitMQ memory or disk alarm).',
      registers: r,
    }),
    leader: new Gauge({
      name: 'outboxd_leader',
      help: '1 when this instance holds the slot and streams; 0 while it waits as a standby.',
      registers: r,
    }),
    reshardRetired: new Gauge({
      name: 'outboxd_reshard_retired',
      help: '1 while a reshard has retired this shard: it publishes nothing and only moves its slot (remove it with reshard --finish).',
      registers: r,
    }),
    state: new Gauge({
      name: 'outboxd_state',
      help: "1 for the relay's current lifecycle state.",
      labelNames: ['state'],
      registers: r,
    }),
    poisonMessages: new Counter({
      name: 'outboxd_poison_messages_total',
      help: 'Messages that could not be mapped or published, by reason.',
      labelNames: ['reason'],
      registers: r,
    }),
    deadLettered: new Counter({
      name: 'outboxd_dead_lettered_total',
      help: 'Poison messages published to the dead-letter destination.',
      registers: r,
    }),
    checkpointSkipped: new Counter({
      name: 'outboxd_checkpoint_skipped_total',
      help: 'Exactly-once: events read again after a restart and skipped, because the checkpoint shows Kafka already holds them.',
      registers: r,
      collect() {
        probes.flushSkipped?.();
      },
    }),
    checkpointUnproven: new Counter({
      name: 'outboxd_checkpoint_unproven_total',
      help: 'Exactly-once: events the checkpoint covers by LSN but cannot prove published, because it was written on another timeline (a failover) on WAL this server does not share with it; published again, never skipped.',
      registers: r,
      collect() {
        probes.flushSkipped?.();
      },
    }),
    kafkaTransactions: new Counter({
      name: 'outboxd_kafka_transactions_total',
      help: 'Exactly-once: Kafka transactions, by result (committed, aborted).',
      labelNames: ['result'],
      registers: r,
    }),
    fenced: new Gauge({
      name: 'outboxd_fenced',
      help: 'Exactly-once: 1 once another relay with the same transactional id fenced this one (it stops).',
      registers: r,
    }),
    checkpointLag: new Gauge({
      name: 'outboxd_checkpoint_lag_bytes',
      help: 'Exactly-once: WAL bytes by which the position confirmed to Postgres trails the last checkpoint committed to Kafka (after a restart: what is read again and skipped).',
      registers: r,
      collect() {
        const checkpoint = probes.checkpointLsn?.();
        if (checkpoint == null || !probes.confirmedLsn) return;
        const behind = checkpoint - probes.confirmedLsn();
        this.set(behind > 0n ? Number(behind) : 0);
      },
    }),
    heartbeats: new Counter({
      name: 'outboxd_heartbeats_total',
      help: 'Heartbeat messages written with pg_logical_emit_message.',
      registers: r,
    }),
    heartbeatsReceived: new Counter({
      name: 'outboxd_heartbeats_received_total',
      help: 'Heartbeat messages read back from the replication stream.',
      registers: r,
    }),
    reconnects: new Counter({
      name: 'outboxd_reconnects_total',
      help: 'Reconnections, by target.',
      labelNames: ['target'],
      registers: r,
    }),
    prunedRows: new Counter({
      name: 'outboxd_pruned_rows_total',
      help: 'Outbox rows deleted by pruning (confirmed and older than outbox.prune.retain), per table.',
      labelNames: ['table'],
      registers: r,
    }),
    partitionsDropped: new Counter({
      name: 'outboxd_pruned_partitions_total',
      help: 'Outbox partitions dropped whole by pruning (prune.mode: partitions), per table.',
      labelNames: ['table'],
      registers: r,
    }),
    partitionsCreated: new Counter({
      name: 'outboxd_partitions_created_total',
      help: 'Daily outbox partitions created ahead of time (prune.mode: partitions), per table.',
      labelNames: ['table'],
      registers: r,
    }),
    pruneSkipped: new Counter({
      name: 'outboxd_prune_skipped_total',
      help: 'Pruning steps given up for the round, by reason (lock_timeout: a lock waited past prune.lockTimeout).',
      labelNames: ['reason'],
      registers: r,
    }),
    oldestRowAge: new Gauge({
      name: 'outboxd_outbox_oldest_row_age_seconds',
      help: "The oldest outbox row's age by its created-at column, per table (read each pruning round; 0 when empty).",
      labelNames: ['table'],
      registers: r,
    }),
    confirmedEpochXid: new Gauge({
      name: 'outboxd_confirmed_epoch_xid',
      help: "This relay's slot's last passed epoch: every outbox row from a transaction below this id is confirmed for this slot (recorded in the lost-slot marker).",
      registers: r,
    }),
    pruneFloorXid: new Gauge({
      name: 'outboxd_prune_floor_xid',
      help: 'Pruning deletes rows from transactions below this id, per table: the oldest confirmed epoch of every slot recorded for the table.',
      labelNames: ['table'],
      registers: r,
    }),
    pruneHeldBy: new Gauge({
      name: 'outboxd_prune_held_by',
      help: "1 for the slot that sets a table's prune floor (the oldest epoch, or one that recorded none), 0 for a slot that did before.",
      labelNames: ['table', 'slot'],
      registers: r,
    }),
    recoveredMessages: new Counter({
      name: 'outboxd_recovered_messages_total',
      help: 'Messages published again from the outbox table by lost-slot recovery (postgres.onLostSlot: recover-from-outbox).',
      registers: r,
    }),
    transactions: new Counter({
      name: 'outboxd_transactions_total',
      help: 'Transactions read from the replication stream.',
      registers: r,
      collect() {
        probes.flushTransactions?.();
      },
    }),
  };
  m.buildInfo.set({ version: VERSION, node: process.versions.node }, 1);
  return m;
}

export type Metrics = ReturnType<typeof createMetrics>;

export interface Probes {
  inFlightMessages?: () => number;
  inFlightBytes?: () => number;
  confirmedLsn?: () => bigint;
  /** Moves per-destination counts kept in a Map on the hot path into the counter. */
  flushReceived?: () => void;
  flushIgnored?: () => void;
  flushTransactions?: () => void;
  flushSkipped?: () => void;
  /** Exactly-once: the commit LSN of the last checkpoint committed to Kafka, when it is a position of the current timeline. */
  checkpointLsn?: () => bigint | null;
}

/** Sets one label of a one-hot gauge to 1 and the others to 0. */
export function setOneHot(g: Gauge<string>, label: string, value: string, all: readonly string[]): void {
  for (const v of all) g.set({ [label]: v }, v === value ? 1 : 0);
}
