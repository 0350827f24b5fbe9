import { describe, expect, it } from 'vitest';
import { checkpointKey, decodeCheckpoint, encodeCheckpoint, isAfter } from '../../src/sink/kafka-checkpoint.js';
import kafkajs from 'kafkajs';
import { classify, isFenced } from '../../src/sink/kafka-client.js';

describe('exactly-once checkpoint record', () => {
  const source = { systemId: '7713936839546435828', database: 'shop' };

  it('round-trips the position, the slot, the database and the transactional id', () => {
    const key = checkpointKey('outboxd', source);
    expect(key).toBe('outboxd@7713936839546435828/shop');
    const value = encodeCheckpoint({
      transactionalId: 'outboxd-outboxd',
      slot: 'outboxd',
      source,
      position: { commitLsn: 0x1_0000_0010n, index: 7 },
    });
    expect(JSON.parse(value)).toEqual({
      v: 1,
      transactionalId: 'outboxd-outboxd',
      slot: 'outboxd',
      systemId: '7713936839546435828',
      database: 'shop',
      lsn: '1/10',
      index: 7,
    });
    expect(decodeCheckpoint(key, Buffer.from(value))).toEqual({
      key,
      transactionalId: 'outboxd-outboxd',
      slot: 'outboxd',
      source,
      position: { commitLsn: 0x1_0000_0010n, index: 7 },
    });
  });

  it('reads a tombstone or a record it does not know as no checkpoint', () => {
    expect(decodeCheckpoint('k', null)).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('not json'))).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('{"v":2,"lsn":"0/1","index":0}'))).toBeNull();
    expect(decodeCheckpoint('k', Buffer.from('{"v":1,"lsn":"0/1","index":1.5}'))).toBeNull();
  });

  it('orders positions by commit LSN, then index; nothing is before no checkpoint', () => {
    const p = (commitLsn: bigint, index: number) => ({ commitLsn, index });
    expect(isAfter(p(0x10n, 0), null)).toBe(true);
    expect(isAfter(p(0x10n, 1), p(0x10n, 0))).toBe(true);
    expect(isAfter(p(0x10n, 0), p(0x10n, 0))).toBe(false);
    expect(isAfter(p(0x20n, 0), p(0x10n, 99))).toBe(true);
    expect(isAfter(p(0x10n, 99), p(0x20n, 0))).toBe(false);
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
