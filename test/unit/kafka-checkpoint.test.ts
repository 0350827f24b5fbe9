import { describe, expect, it } from 'vitest';
import { checkpointKey, decodeCheckpoint, encodeCheckpoint } from '../../src/sink/kafka/exactly-once-checkpoint.js';
import kafkajs from 'kafkajs';
import { classify, isFenced } from '../../src/sink/kafka/client.js';

describe('exactly-once checkpoint record', () => {
  const source = { systemId: '7713936839546435828', database: 'shop' };

  it('round-trips the position, its timeline, the slot, the database and the transactional id (version 2)', () => {
    const key = checkpointKey('outboxd', source);
    expect(key).toBe('outboxd@7713936839546435828/shop');
    const value = encodeCheckpoint({
      transactionalId: 'outboxd-outboxd',
      slot: 'outboxd',
      source: { ...source, timeline: 3 },
      position: { commitLsn: 0x1_0000_0010n, index: 7 },
    });
    expect(JSON.parse(value)).toEqual({
      v: 2,
      transactionalId: 'outboxd-outboxd',
      slot: 'outboxd',
      systemId: '7713936839546435828',
      database: 'shop',
      timeline: 3,
      lsn: '1/10',
      index: 7,
    });
    expect(decodeCheckpoint(key, Buffer.from(value))).toEqual({
      key,
      transactionalId: 'outboxd-outboxd',
      slot: 'outboxd',
      source,
      position: { commitLsn: 0x1_0000_0010n, index: 7, timeline: 3 },
    });
  });

  it('reads a version 1 record (written before records carried a timeline) with its timeline unknown', () => {
    const v1 = { v: 1, transactionalId: 't', slot: 'outboxd', systemId: '1', database: 'shop', lsn: '0/3096930', index: 999 };
    expect(decodeCheckpoint('k', Buffer.from(JSON.stringify(v1)))?.position).toEqual({ commitLsn: 0x3096930n, index: 999, timeline: null });
  });

  it('reads a tombstone or a record it does not know as no checkpoint', () => {
    expect(decodeCheckpoint('k', null)).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('not json'))).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('{"v":3,"lsn":"0/1","index":0}'))).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('{"v":1,"lsn":"0/1","index":1.5}'))).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('{"v":2,"lsn":"0/1","index":1}'))).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('{"v":2,"timeline":0,"lsn":"0/1","index":1}'))).toBeNull();
  });

  it('recognises a fenced producer along the cause chain, also as kafkajs names error code 90', () => {
    expect(isFenced({ type: 'INVALID_PRODUCER_EPOCH' })).toBe(true);
    expect(isFenced({ name: 'KafkaJSNumberOfRetriesExceeded', cause: { type: 'INVALID_PRODUCER_EPOCH' } })).toBe(true);
    expect(isFenced(new Error('Unknown error code 90'))).toBe(true);
    expect(isFenced({ type: 'NOT_LEADER_FOR_PARTITION' })).toBe(false);
    expect(isFenced(new Error('Unknown error code 900'))).toBe(false);
  });

  it('reads "no broker answered FindCoordinator" as retriable (a broker restarting), other non-retriable kafkajs errors not', () => {
    const { KafkaJSGroupCoordinatorNotFound, KafkaJSNonRetriableError } = kafkajs as unknown as Record<string, new (m: string) => Error>;
    const lost = new (KafkaJSGroupCoordinatorNotFound as new (m: string) => Error)('Failed to find group coordinator');
    expect((lost as Error & { retriable?: boolean }).retriable).toBe(false);
    expect(classify(lost, 'committing the Kafka transaction').retriable).toBe(true);
    expect(classify({ name: 'KafkaJSError', retriable: false, cause: lost }, 'committing').retriable).toBe(true);
    expect(classify(new (KafkaJSNonRetriableError as new (m: string) => Error)('bad'), 'publishing').retriable).toBe(false);
  });
});
