/**
 * The public types of outboxd, in one place. Read this file first: it is the map of the relay.
 *
 *   source (WAL) ──▶ outbox mapper ──▶ pipeline (batch, in-flight bound) ──▶ sink (broker)
 *        ▲                                                                      │ confirm
 *        └────────── checkpoint watermark ◀──────────────────────────────────────┘
 */
import type { Lsn } from './lsn.js';
import type { PoisonError } from './errors.js';

/** A transaction as the pipeline tracks it, from BEGIN to the broker's last confirm. */
export interface TxnRef {
  readonly xid: number;
  /** LSN of the commit record (from BEGIN); the `outboxd.lsn` header. */
  readonly commitLsn: Lsn;
  /** Commit time, milliseconds since the Unix epoch. */
  readonly commitTimeMs: number;
  /** `commitLsn` as Postgres writes it and `xid` as text: header values, formatted once. */
  readonly lsnText: string;
  readonly xidText: string;
}

/**
 * Where an event sits in the WAL: the commit LSN of its Postgres transaction and its index among
 * that transaction's outbox events. It orders every event totally, also in a transaction that
 * spans batches: the exactly-once checkpoint is one (docs/adr/0009).
 */
export interface Position {
  readonly commitLsn: Lsn;
  readonly index: number;
}

/**
 * Where a WAL position was read: the server's system identifier and its timeline. A position is
 * comparable only with positions of the same origin, or of the shared part of a timeline's
 * history: after a promotion the new timeline reuses LSNs the old one had already passed, for
 * other records (docs/adr/0009). A physical standby shares its primary's system identifier, so
 * only the timeline tells the two apart.
 */
export interface Origin {
  readonly systemId: string;
  readonly timeline: number;
}

/**
 * One ancestor in a timeline's history (a line of TIMELINE_HISTORY): `timeline`'s WAL below
 * `switchLsn` is shared by it and every descendant; at and above it, the same LSNs hold other
 * records on the two lines.
 */
export interface TimelineSwitch {
  readonly timeline: number;
  readonly switchLsn: Lsn;
}

/** The database a replication session reads, as IDENTIFY_SYSTEM and TIMELINE_HISTORY name it. */
export interface SourceIdentity extends Origin {
  readonly database: string;
  /**
   * The ancestors of `timeline`, oldest first; empty on timeline 1. Null when the server could
   * not give the history: then no position of another timeline compares with this one.
   */
  readonly history: readonly TimelineSwitch[] | null;
}

/**
 * A position as the exactly-once checkpoint stores it: with the timeline it was read on, or null
 * for a record written before checkpoints carried one (version 1).
 */
export interface StoredPosition extends Position {
  readonly timeline: number | null;
}

/** The message a sink publishes. Built by the mapper from an outbox row or a logical message. */
export interface OutboxMessage {
  /** The stable message id (`id` column): consumers dedupe on it. */
  readonly id: string;
  /** Topic (Kafka) or routing key (RabbitMQ), from the sink's template. */
  readonly destination: string;
  /** Shard key (`aggregateid`): Kafka message key, AMQP header and routing-key token. */
  readonly key: string;
  readonly aggregateType: string;
  /** Event type (`type` column), or null. */
  readonly type: string | null;
  /** The body, byte for byte: jsonb/json/text as their text, bytea as bytes. */
  readonly payload: string | Buffer;
  readonly contentType: string;
  /** Headers to send: `id`, `type`, correlation headers, the `headers` column, source position. */
  readonly headers: Readonly<Record<string, string>>;
  readonly correlationId: string | null;
  readonly replyTo: string | null;
  /** The transaction this message belongs to. */
  readonly txn: TxnRef;
  /** Its index among the transaction's outbox events (see Position). */
  readonly index: number;
  /** Approximate size in bytes (payload + key + headers), for the in-flight bound. */
  readonly sizeBytes: number;
}

/** What a sink reports for a batch that reached the broker. */
export interface PublishOutcome {
  /**
   * Messages the broker refused for a reason tied to the message itself (too large, unroutable).
   * Every message of the batch not listed here or in `unsent` was confirmed.
   */
  readonly poisoned: ReadonlyArray<{ readonly index: number; readonly error: PoisonError }>;
  /**
   * Messages after a poisoned one that were not sent (exactly-once: a checkpoint may not pass an
   * event not yet dealt with). The pipeline sends them once the poison is disposed of.
   */
  readonly unsent?: readonly number[];
}

export type SinkType = 'kafka' | 'rabbitmq' | 'stdout';

/**
 * A broker. Implementations: `sink/kafka/at-least-once.ts`, `sink/stdout.ts`.
 *
 * Contract:
 * - `publish` is never called concurrently with itself; batches arrive in commit order.
 * - Within a batch, messages with the same destination and key are published in array order.
 * - `publish` resolves only after the broker has durably confirmed every message not listed in
 *   `poisoned`. It rejects with a `SinkError` if the batch as a whole failed; then none of the
 *   batch counts as confirmed and the pipeline retries it whole (retriable) or stops (not).
 */
export interface Sink {
  readonly type: SinkType;
  /** Connects and checks that publishing can work. Resolves when ready; rejects with SinkError. */
  connect(): Promise<void>;
  /**
   * What makes a message unpublishable that can be seen before sending it (its size, an illegal
   * destination, a broker protocol limit), or null. Pure and cheap: the pipeline asks for every
   * message as it arrives, and a poison message never joins a batch, so under `halt` nothing
   * after it is published.
   */
  check(message: OutboxMessage): PoisonError | null;
  /** Messages `check` passed. A broker may still refuse one (listed in `poisoned`). */
  publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome>;
  /**
   * A sink whose every publish has a fixed cost, whatever its size (a Kafka transaction: its
   * coordinator's round trips, its markers on every partition): the most one publish may take
   * when more than a batch is queued. A batch is still due by the pipeline's own bounds
   * (`batchMaxMessages`, `batchMaxBytes`, `linger`), so this never adds latency.
   */
  readonly batchLimits?: { readonly batchMaxMessages: number; readonly batchMaxBytes: number };
  /**
   * How many batches the pipeline may have at the broker at once (default 1). With 2, the next
   * batch goes out while the one before waits for its confirms, so the broker is never idle
   * between batches; the pipeline then keeps a key's messages (and a message id) to one batch in
   * flight at a time, so per-key order holds whatever fails (docs/adr/0022). Only for a sink
   * whose `publish` calls may overlap: each call confirms, fails and is retried on its own.
   */
  readonly batchesInFlight?: 1 | 2;
  /**
   * Publishes one message to the dead-letter destination with the error in its headers.
   * Resolves once the broker confirmed it.
   */
  publishDeadLetter(message: DeadLetter): Promise<void>;
  /** Called after a failed publish, before the retry: drop and rebuild broker state if needed. */
  reset(): Promise<void>;
  /**
   * Exactly-once sinks only: takes the broker's side of a new replication session (fencing any
   * other holder) and reads the last event the broker holds for this source (its last committed
   * checkpoint) into the relay's PublishedUpTo, which decides what the session skips. Called
   * before each session streams, by the leader. Rejects when the checkpoint cannot be read or
   * belongs to another database.
   */
  readCheckpoint?(session: SinkSession): Promise<void>;
  /**
   * Kafka: the partition a message went to, as the sink's last metadata has it, or null when it
   * cannot tell. Asked (for the message's trace span) only after `publish` confirmed the
   * message; pure and cheap.
   */
  partitionOf?(message: OutboxMessage): number | null;
  /** Flushes nothing, loses nothing: only closes connections. Idempotent. */
  close(): Promise<void>;
}

/** What an exactly-once sink learns of the replication session it publishes for. */
export interface SinkSession {
  readonly source: SourceIdentity;
  /**
   * Whether this relay holds the slot's leader lock right now. False when it cannot tell (its
   * lock's connection is gone, or it waits for the lock). A sink that another producer fenced
   * asks this before it fences back (docs/adr/0009).
   */
  stillLeader(): Promise<boolean>;
}

/** A poison message on its way to the dead-letter destination. */
export interface DeadLetter {
  readonly id: string | null;
  readonly key: string | null;
  /** The original destination, when one could be computed. */
  readonly destination: string | null;
  readonly payload: string | Buffer;
  readonly contentType: string;
  readonly headers: Readonly<Record<string, string>>;
  readonly error: PoisonError;
  readonly txn: TxnRef;
  /** Its index among the transaction's outbox events (see Position). */
  readonly index: number;
}

/** Lifecycle of the relay, as `/readyz` and the logs report it. */
export type RelayState =
  | 'starting'
  /** Another instance holds the slot; this one waits to take over. */
  | 'standby'
  | 'streaming'
  /** Postgres is unreachable; retrying with backoff. (A broker outage shows as not ready while streaming.) */
  | 'reconnecting'
  /** A poison message under policy `halt`: nothing advances until an operator acts. */
  | 'halted'
  | 'stopping'
  | 'stopped'
  | 'failed';
