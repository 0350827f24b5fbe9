import type kafkajs from 'kafkajs';
import type { BackoffConfig } from '../../config/config.js';
import { SinkError } from '../../errors.js';
import type { OutboxMessage, Position, SourceIdentity, StoredPosition } from '../../interfaces.js';
import { formatLsn, parseLsn } from '../../lsn.js';
import { classify, protocolErrorType } from './client.js';
import { type KafkaBroker, type KafkaCluster, fetchCommitted, internalCluster, latestOffset } from './kafkajs-cluster.js';
import { retry } from '../../retry.js';

/**
 * The exactly-once checkpoint (docs/adr/0009): one record per committed Kafka transaction, in a
 * compacted topic, partition 0, written inside the transaction it describes. Its key names the
 * slot and the database; its value the position of the transaction's last event, the timeline
 * that position is on, and the transactional id that wrote it.
 *
 * Reading it back needs an exact end: every record of ours that is committed, none that is not.
 * kafkajs's consumer cannot say where a read_committed partition ends (its batches report the
 * high watermark, not the last stable offset) and joins a consumer group, which costs a broker's
 * group.initial.rebalance.delay.ms (3 s by default) on every start. So the read goes through
 * kafkajs's own cluster and broker objects (kafkajs-cluster.ts, behind the door that checks kafkajs's version):
 * ListOffsets for the log end, then read_committed Fetch requests until the position passes it.
 */

/** The database a checkpoint belongs to: the cluster's system identifier and the database's name. */
export type DatabaseRef = Pick<SourceIdentity, 'systemId' | 'database'>;

export interface CheckpointRecord {
  readonly key: string;
  readonly transactionalId: string;
  readonly slot: string;
  readonly source: DatabaseRef;
  /** With its timeline: null in a version 1 record, written before records carried one. */
  readonly position: StoredPosition;
}

/**
 * The record's key: the slot and the database it reads, `<slot>@<system id>/<database>`. Not the
 * timeline: compaction keeps one record per key, and the last one must be found after a failover.
 */
export function checkpointKey(slot: string, source: DatabaseRef): string {
  return `${slot}@${source.systemId}/${source.database}`;
}

/**
 * Version 2: version 1's fields and `timeline`, the timeline the position is on. Without it a
 * position cannot be compared safely after a promotion (docs/adr/0009). A relay of an earlier
 * release reads a version 2 record as no checkpoint, and publishes again from its slot.
 */
export function encodeCheckpoint(
  r: Omit<CheckpointRecord, 'key' | 'source' | 'position'> & { source: DatabaseRef & { timeline: number }; position: Position },
): string {
  return JSON.stringify({
    v: 2,
    transactionalId: r.transactionalId,
    slot: r.slot,
    systemId: r.source.systemId,
    database: r.source.database,
    timeline: r.source.timeline,
    lsn: formatLsn(r.position.commitLsn),
    index: r.position.index,
  });
}

/**
 * A checkpoint record, or null for anything else (a tombstone, a record not ours to read). A
 * version 1 record (no timeline) reads with timeline null: its position compares only where every
 * timeline of the current history shares the WAL (positions/origin.ts).
 */
export function decodeCheckpoint(key: string, value: Buffer | null): CheckpointRecord | null {
  if (value === null) return null;
  try {
    const v = JSON.parse(value.toString('utf8')) as Record<string, unknown>;
    if ((v.v !== 1 && v.v !== 2) || typeof v.lsn !== 'string' || !Number.isSafeInteger(v.index)) return null;
    const timeline = v.v === 2 ? v.timeline : null;
    if (timeline !== null && !(Number.isSafeInteger(timeline) && (timeline as number) >= 1)) return null;
    return {
      key,
      transactionalId: String(v.transactionalId),
      slot: String(v.slot),
      source: { systemId: String(v.systemId), database: String(v.database) },
      position: { commitLsn: parseLsn(v.lsn), index: v.index as number, timeline: timeline as number | null },
    };
  } catch {
    return null;
  }
}

const READ_UNCOMMITTED = 0;
const READ_COMMITTED = 1;
const PARTITION = 0;

export interface ReadResult {
  /** The last committed checkpoint of `key`, or null. */
  readonly mine: CheckpointRecord | null;
  /** The last committed record of each other key that carries the same transactional id. */
  readonly sameTransactionalId: CheckpointRecord[];
}

/**
 * Reads partition 0 of the checkpoint topic from its start, seeing committed records only.
 *
 * - `to: 'log-end'`: up to the log end as it was when the read began. The read waits while an
 *   open transaction holds the last stable offset back (at most that producer's transaction
 *   timeout): our own last commit may lie behind it. Only after our fence is this final.
 * - `to: 'stable'`: up to the last stable offset, without waiting. Before our fence, an open
 *   transaction may be the previous holder's, which only our fence ends.
 *
 * Rejects with a one-line SinkError when the topic is missing (not retriable) or the read does
 * not finish within `timeoutMs` (retriable).
 */
export async function readCheckpoints(
  kafka: kafkajs.Kafka,
  topic: string,
  key: string,
  transactionalId: string,
  timeoutMs: number,
  to: 'log-end' | 'stable' = 'log-end',
): Promise<ReadResult> {
  const cluster = internalCluster(kafka, { allowAutoTopicCreation: false, isolationLevel: READ_COMMITTED });
  const deadline = Date.now() + timeoutMs;
  try {
    await cluster.connect();
    await knownTopic(cluster, topic, Math.min(deadline, Date.now() + MISSING_CONFIRM_MS));
    const leaders = cluster.findLeaderForPartitions(topic, [PARTITION]);
    const nodeId = Object.keys(leaders)[0];
    if (nodeId === undefined)
      throw new SinkError('checkpoint_unavailable', `checkpoint topic ${topic} has no leader for partition 0`, { retriable: true });
    const broker = await cluster.findBroker({ nodeId });
    const end = await logEnd(broker, topic, to === 'log-end' ? READ_UNCOMMITTED : READ_COMMITTED);
    const latest = new Map<string, CheckpointRecord | null>();
    let position = '0';
    while (BigInt(position) < end) {
      const waitMs = Math.min(500, Math.max(0, deadline - Date.now()));
      const data = await fetchCommitted(broker, topic, PARTITION, position, waitMs);
      if (data === undefined)
        throw new SinkError('checkpoint_unavailable', `checkpoint topic ${topic}: empty fetch response`, { retriable: true });
      if (data.errorCode !== 0)
        throw new SinkError('checkpoint_unavailable', `checkpoint topic ${topic}: fetch error code ${data.errorCode}`, { retriable: true });
      if (data.next !== null) {
        for (const m of data.records) {
          if (m.key === null) continue;
          const k = m.key.toString('utf8');
          latest.set(k, decodeCheckpoint(k, m.value));
        }
        position = data.next;
        continue;
      }
      // Nothing visible from here: done once the stable offset reached the end we look for
      // (the rest is gone to compaction or was never there); otherwise an open transaction of
      // another producer still holds it back.
      if (BigInt(data.lastStableOffset) >= end) break;
      if (Date.now() >= deadline) {
        throw new SinkError(
          'checkpoint_unavailable',
          `reading checkpoint topic ${topic}: an open transaction holds its last stable offset at ${data.lastStableOffset} (log end ${end}) for over ${Math.round(timeoutMs / 1000)} s`,
          { retriable: true },
        );
      }
    }
    const mine = latest.get(key) ?? null;
    const sameTransactionalId = [...latest.values()].filter(
      (r): r is CheckpointRecord => r !== null && r.key !== key && r.transactionalId === transactionalId,
    );
    return { mine, sameTransactionalId };
  } catch (err) {
    throw classify(err, `reading checkpoint topic ${topic}`);
  } finally {
    await cluster.disconnect().catch(() => undefined);
  }
}

/**
 * A broker that just started may not know its topics yet for a moment: a topic counts as missing
 * only when the metadata still lacks it after MISSING_CONFIRM_MS.
 */
const MISSING_CONFIRM_MS = 5_000;
/** How often the metadata is asked again meanwhile. */
const MISSING_RETRY: BackoffConfig = { initialMs: 500, maxMs: 500 };

async function knownTopic(cluster: KafkaCluster, topic: string, until: number): Promise<void> {
  try {
    await retry(() => cluster.addTargetTopic(topic), {
      backoff: MISSING_RETRY,
      // Bounded by `until`, not by a signal: the read's own deadline ends it.
      signal: new AbortController().signal,
      isRetriable: (err) => protocolErrorType(err) === 'UNKNOWN_TOPIC_OR_PARTITION' && Date.now() < until,
      random: () => 1, // every 500 ms: no fleet to spread, one relay waiting for its broker
    });
  } catch (err) {
    if (protocolErrorType(err) === 'UNKNOWN_TOPIC_OR_PARTITION') throw missingCheckpointTopic(topic, err);
    throw err;
  }
}

/** The log end offset (READ_UNCOMMITTED) or the last stable offset (READ_COMMITTED) of partition 0. */
async function logEnd(broker: KafkaBroker, topic: string, isolationLevel: number): Promise<bigint> {
  const offset = await latestOffset(broker, topic, PARTITION, isolationLevel);
  if (offset === undefined)
    throw new SinkError('checkpoint_unavailable', `checkpoint topic ${topic}: no offsets for partition 0`, { retriable: true });
  return BigInt(offset);
}

export function missingCheckpointTopic(topic: string, cause?: unknown): SinkError {
  return new SinkError(
    'checkpoint_topic_missing',
    `checkpoint topic "${topic}" does not exist: exactly-once needs it; create it with \`outboxd setup\` (compacted, one partition)`,
    { retriable: false, cause },
  );
}

/** Where a message sits in the source's order. */
export function positionOf(m: OutboxMessage): Position {
  return { commitLsn: m.txn.commitLsn, index: m.index };
}

/** The checkpoint record for `p`, a position on `source`'s timeline, as one more topic of a transaction's send. */
export function checkpointMessage(
  topic: string,
  transactionalId: string,
  slot: string,
  source: SourceIdentity,
  p: Position,
): kafkajs.TopicMessages {
  return {
    topic,
    messages: [{ key: checkpointKey(slot, source), value: encodeCheckpoint({ transactionalId, slot, source, position: p }), partition: 0 }],
  };
}

/**
 * The refusal when the checkpoint topic holds a checkpoint of our transactional id for another
 * database but none for ours: fencing that id would stop that database's relay.
 */
export function foreignCheckpoint(
  found: { mine: CheckpointRecord | null; sameTransactionalId: CheckpointRecord[] },
  source: DatabaseRef,
  topic: string,
  transactionalId: string,
): SinkError | null {
  const other = found.sameTransactionalId[0];
  if (found.mine !== null || other === undefined) return null;
  return new SinkError(
    'checkpoint_foreign',
    `checkpoint topic ${topic} holds a checkpoint of transactional id "${transactionalId}" for slot ${other.slot} of another database (system ${other.source.systemId}, database ${other.source.database}), not this one (system ${source.systemId}, database ${source.database}): give each relay its own sink.kafka.transactionalId`,
    { retriable: false },
  );
}
