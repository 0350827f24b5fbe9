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

/** The database a stream comes from, as IDENTIFY_SYSTEM names it. */
export interface SourceIdentity {
  readonly systemId: string;
  readonly database: string;
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
 * A broker. Implementations: `sink/kafka.ts`, `sink/stdout.ts`.
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
   * Publishes one message to the dead-letter destination with the error in its headers.
   * Resolves once the broker confirmed it.
   */
  publishDeadLetter(message: DeadLetter): Promise<void>;
  /** Called after a failed publish, before the retry: drop and rebuild broker state if needed. */
  reset(): Promise<void>;
  /**
   * Exactly-once sinks only: the position of the last event the broker holds for this source
   * (its last committed checkpoint), or null when it holds none. Read before each replication
   * session; every event at or before it is skipped. Rejects when the checkpoint cannot be read
   * or belongs to another database.
   */
  readCheckpoint?(source: SourceIdentity): Promise<Position | null>;
  /**
   * Kafka: the partition a message went to, as the sink's last metadata has it, or null when it
   * cannot tell. Asked (for the message's trace span) only after `publish` confirmed the
   * message; pure and cheap.
   */
  partitionOf?(message: OutboxMessage): number | null;
  /** Flushes nothing, loses nothing: only closes connections. Idempotent. */
  close(): Promise<void>;
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
