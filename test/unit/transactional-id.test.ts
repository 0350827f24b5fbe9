import type kafkajs from 'kafkajs';
import { describe, expect, it } from 'vitest';
import { FencedError, SinkError } from '../../src/errors.js';
import { TransactionalId } from '../../src/sink/kafka/transactional-id.js';

/**
 * The exactly-once sink's hold on its transactional id, with a fake producer that records every
 * InitProducerId (kafkajs sends one with a producer's first transaction) and a fake leader check.
 */
function scene(transactionTimeoutMs = 60_000) {
  const steps: string[] = [];
  let fenced = 0;
  const producer = () => {
    let first = true;
    return {
      events: { DISCONNECT: 'producer.disconnect' },
      on: () => () => undefined,
      disconnect: async () => undefined,
      transaction: async () => {
        if (first) steps.push('fence');
        first = false;
        return { abort: async () => undefined } as unknown as kafkajs.Transaction;
      },
    } as unknown as kafkajs.Producer;
  };
  const id = new TransactionalId('outboxd-s', transactionTimeoutMs, {
    connect: async () => producer(),
    disconnected: () => undefined,
    fenced: () => {
      fenced++;
    },
  });
  const leader = (answer: boolean) => async () => {
    steps.push(`lock? ${answer}`);
    return answer;
  };
  const reread = async () => {
    steps.push('reread');
  };
  return { id, steps, leader, reread, fencedCount: () => fenced };
}

const FENCED = { type: 'INVALID_PRODUCER_EPOCH', message: 'Producer attempted an operation with an old epoch' };
const CODE_90 = new Error('Unknown error code 90');

/** A session started: the id taken (one fence) and the checkpoint read. */
async function leading(s: ReturnType<typeof scene>) {
  await s.id.takeOver();
  s.id.settled();
  s.steps.length = 0;
}

describe('TransactionalId', () => {
  it('a fenced or epoch error is retriable and leaves a doubt; nothing is final until the leader lock is asked', async () => {
    const s = scene();
    await leading(s);
    const e = s.id.failure(FENCED, 'committing the Kafka transaction');
    expect(e).toBeInstanceOf(SinkError);
    expect(e).not.toBeInstanceOf(FencedError);
    expect(e.retriable).toBe(true);
    expect(e.reason).toBe('fenced_unconfirmed');
    expect(s.id.inDoubt).toBe('fenced');
    expect(s.fencedCount()).toBe(0);
  });

  it('a fenced error after transactionTimeout (our own timeout, or a relay that took over while we were paused) is the same doubt, named so', async () => {
    const s = scene(0);
    await leading(s);
    await s.id.begin();
    const e = s.id.failure(CODE_90, 'committing the Kafka transaction');
    expect(e.reason).toBe('transaction_timeout');
    expect(e.retriable).toBe(true);
    expect(s.id.inDoubt).toBe('fenced');
  });

  it('still the leader: proves it, then fences, then re-reads the checkpoint, in that order', async () => {
    const s = scene();
    await leading(s);
    s.id.failure(FENCED, 'publishing to Kafka');
    await s.id.drop();
    expect(await s.id.settle(s.leader(true), s.reread)).toBe(true);
    expect(s.steps).toEqual(['lock? true', 'fence', 'reread']);
    expect(s.id.inDoubt).toBe('none');
    await s.id.begin();
    expect(s.steps).toEqual(['lock? true', 'fence', 'reread']);
  });

  it('no longer the leader: fenced for good, without fencing back or re-reading, and every later call says so', async () => {
    const s = scene();
    await leading(s);
    s.id.failure(FENCED, 'committing the Kafka transaction');
    await s.id.drop();
    const err = await s.id.settle(s.leader(false), s.reread).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FencedError);
    expect((err as FencedError).retriable).toBe(false);
    expect((err as Error).message).toMatch(
      /^fenced: another producer took transactional id "outboxd-s" .* no longer holds the slot's leader lock/,
    );
    expect(s.steps).toEqual(['lock? false']);
    expect(s.fencedCount()).toBe(1);
    await expect(s.id.begin()).rejects.toBe(err);
    await expect(s.id.get()).rejects.toBe(err);
    expect(s.id.failure(new Error('anything'), 'publishing')).toBe(err);
    expect(s.steps).toEqual(['lock? false']);
  });

  it('any failure that dropped the producer: the id is taken again only by the proven leader (a paused relay may see a timeout, not a fence)', async () => {
    const s = scene();
    await leading(s);
    await s.id.drop();
    expect(s.id.inDoubt).toBe('dropped');
    await expect(s.id.begin()).rejects.toThrow(/in doubt \(dropped\)/);
    const err = await s.id.settle(s.leader(false), s.reread).catch((e: unknown) => e);
    expect((err as Error).message).toMatch(/^fenced: this relay no longer holds the slot's leader lock/);
    expect(s.steps).toEqual(['lock? false']);
  });

  it('a lost commit answer: lock, fence (which settles it), re-read', async () => {
    const s = scene();
    await leading(s);
    s.id.doubtCommit();
    await s.id.drop();
    expect(s.id.inDoubt).toBe('commit');
    await s.id.settle(s.leader(true), s.reread);
    expect(s.steps).toEqual(['lock? true', 'fence', 'reread']);
  });

  it('doubts only grow until settled: a fenced error outranks a lost commit, a drop outranks neither', async () => {
    const s = scene();
    await leading(s);
    s.id.doubtCommit();
    s.id.failure(FENCED, 'committing the Kafka transaction');
    s.id.doubtCommit();
    await s.id.drop();
    expect(s.id.inDoubt).toBe('fenced');
  });

  it('a step that fails keeps the doubt: the next attempt asks the lock again', async () => {
    const s = scene();
    await leading(s);
    s.id.failure(FENCED, 'publishing to Kafka');
    await s.id.drop();
    await expect(
      s.id.settle(s.leader(true), async () => {
        throw new SinkError('checkpoint_unavailable', 'no leader', { retriable: true });
      }),
    ).rejects.toThrow('no leader');
    expect(s.id.inDoubt).toBe('fenced');
    await s.id.settle(s.leader(false), s.reread).catch(() => undefined);
    expect(s.steps).toEqual(['lock? true', 'fence', 'lock? false']);
  });

  it('a standby connects without fencing; a session start fences once; nothing is in doubt before it', async () => {
    const s = scene();
    await s.id.get();
    await s.id.drop();
    expect(s.id.inDoubt).toBe('none');
    expect(s.steps).toEqual([]);
    await s.id.takeOver();
    expect(s.steps).toEqual(['fence']);
  });

  it('other errors are classified as before and leave no doubt by themselves', async () => {
    const s = scene();
    await leading(s);
    const e = s.id.failure({ type: 'NOT_LEADER_FOR_PARTITION', retriable: true, message: 'x' }, 'publishing');
    expect(e.retriable).toBe(true);
    expect(s.id.inDoubt).toBe('none');
  });
});
