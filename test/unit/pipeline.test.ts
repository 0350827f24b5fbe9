import { describe, expect, it, vi } from 'vitest';
import type { Txn } from '../../src/positions/watermark.js';
import type { PipelineConfig, PoisonPolicy } from '../../src/config/config.js';
import { SinkError } from '../../src/errors.js';
import type { OutboxMessage } from '../../src/interfaces.js';
import { FakeSink, nullKeyLetter, startPipeline } from './fake-sink.js';
import { until } from '../harness/wait.js';

const cfg: PipelineConfig = {
  maxInFlightMessages: 10,
  maxInFlightBytes: 1_000_000,
  batchMaxMessages: 4,
  batchMaxBytes: 1_000_000,
  lingerMs: 1,
  retry: { initialMs: 1, maxMs: 2 },
};

function setup(policy: PoisonPolicy = 'halt', over: Partial<PipelineConfig> = {}, limits?: FakeSink['batchLimits']) {
  const sink = new FakeSink();
  if (limits) Object.assign(sink, { batchLimits: limits });
  const { pipeline, watermark, events } = startPipeline(sink, {
    cfg: { ...cfg, ...over },
    policy,
    stallTimeoutMs: over.lingerMs === 0 ? 20 : 5_000,
  });
  let xid = 0;
  /** Writes one committed transaction with the given message ids. */
  const txn = (...ids: string[]): { txn: Txn; waits: Array<Promise<void> | undefined> } => {
    xid++;
    const t = watermark.begin(xid, BigInt(xid * 100), Date.now());
    const waits = ids.map((id) => pipeline.push(msg(id, t), t));
    watermark.commit(t, BigInt(xid * 100 + 50));
    return { txn: t, waits };
  };
  return { sink, watermark, pipeline, events, txn };
}

function msg(id: string, txn: Txn): OutboxMessage {
  return {
    id,
    destination: 'd',
    key: id[0] ?? 'k',
    aggregateType: 'a',
    type: null,
    payload: 'x',
    contentType: 'text/plain',
    headers: { id },
    correlationId: null,
    replyTo: null,
    txn,
    index: 0,
    sizeBytes: 10,
  };
}

describe('Pipeline', () => {
  it('publishes in push order, in batches, and advances the watermark to the last commit end', async () => {
    const { sink, pipeline, events, txn, watermark } = setup();
    txn('a1', 'a2', 'a3');
    txn('b1');
    txn('c1', 'c2', 'c3', 'c4', 'c5');
    expect(await pipeline.drain(1000)).toBe(true);
    expect(sink.batches.flat()).toEqual(['a1', 'a2', 'a3', 'b1', 'c1', 'c2', 'c3', 'c4', 'c5']);
    expect(Math.max(...sink.batches.map((b) => b.length))).toBeLessThanOrEqual(4);
    expect(watermark.lsn).toBe(350n);
    expect(events.advanced.at(-1)).toBe(350n);
    await pipeline.stop();
  });

  it("a sink with batchLimits takes every queued batch up to them, and never waits for more than the pipeline's own bounds", async () => {
    const { sink, pipeline, txn } = setup(
      'halt',
      { maxInFlightMessages: 20, batchMaxMessages: 4 },
      { batchMaxMessages: 9, batchMaxBytes: 1_000_000 },
    );
    let open!: () => void;
    sink.gate = new Promise((r) => {
      open = r;
    });
    // The first batch goes alone (nothing queued behind it yet); while it waits, 13 more queue.
    txn('a1', 'a2', 'a3', 'a4');
    await until('the first batch at the sink', async () => sink.publishing > 0, 1_000, 1);
    txn('b1', 'b2', 'b3', 'b4', 'b5', 'b6', 'b7', 'b8', 'b9', 'b10', 'b11', 'b12', 'b13');
    open();
    sink.gate = null;
    expect(await pipeline.drain(1000)).toBe(true);
    // Nine in one publish (more than batchMaxMessages, at most the sink's limit), then the rest.
    expect(sink.batches.map((b) => b.length)).toEqual([4, 9, 4]);
    expect(sink.batches.flat()).toEqual(['a1', 'a2', 'a3', 'a4', ...Array.from({ length: 13 }, (_, i) => `b${i + 1}`)]);
    // A lone message is due after linger, as without limits: nothing waits to fill a transaction.
    txn('c1');
    expect(await pipeline.drain(1000)).toBe(true);
    expect(sink.batches.at(-1)).toEqual(['c1']);
    await pipeline.stop();
  });

  it('applies back-pressure when the in-flight bound is full, and releases it after confirms', async () => {
    const { sink, pipeline, txn } = setup('halt', { maxInFlightMessages: 4, batchMaxMessages: 4 });
    let open!: () => void;
    sink.gate = new Promise((r) => {
      open = r;
    });
    const { waits } = txn('a', 'b', 'c', 'd', 'e');
    expect(waits.slice(0, 3)).toEqual([undefined, undefined, undefined]);
    const blocked = waits[3];
    expect(blocked).toBeInstanceOf(Promise);
    let released = false;
    void blocked?.then(() => {
      released = true;
    });
    // The first batch is with the sink, waiting for its confirm: the bound is full and stays so.
    await until('the first batch at the sink', async () => sink.publishing > 0, 1_000, 1);
    expect(released).toBe(false);
    expect(pipeline.inFlightMessages).toBe(5);
    open();
    sink.gate = null;
    await pipeline.drain(1000);
    expect(released).toBe(true);
    await pipeline.stop();
  });

  it('retries a retriable failure with the whole batch before anything later, and only then advances', async () => {
    const { sink, pipeline, txn, watermark, events } = setup();
    sink.failNext.push(
      new SinkError('NOT_LEADER', 'leader moved', { retriable: true }),
      new SinkError('NOT_LEADER', 'again', { retriable: true }),
    );
    txn('k1', 'k2');
    txn('k3');
    expect(await pipeline.drain(1000)).toBe(true);
    expect(sink.batches.flat()).toEqual(['k1', 'k2', 'k3']);
    expect(sink.resets).toBe(2);
    expect(events.health).toContain(false);
    expect(events.health.at(-1)).toBe(true);
    expect(watermark.lsn).toBe(250n);
    await pipeline.stop();
  });

  it('stops without confirming on a non-retriable failure', async () => {
    const { sink, pipeline, txn, watermark, events } = setup();
    sink.failNext.push(new SinkError('TOPIC_AUTHORIZATION_FAILED', 'denied', { retriable: false }));
    txn('x1');
    expect(await pipeline.drain(200)).toBe(false);
    expect(events.fatal?.message).toBe('denied');
    expect(watermark.lsn).toBe(0n);
    await pipeline.stop();
  });

  it('halts on a poison message under halt: the watermark stays before its transaction', async () => {
    const { sink, pipeline, txn, watermark, events } = setup('halt');
    sink.refuse.add('bad');
    txn('ok1');
    txn('ok2', 'bad', 'ok3');
    txn('later');
    await pipeline.drain(200);
    expect(events.halted?.reason).toBe('oversized');
    expect(watermark.lsn).toBe(150n);
    expect(sink.batches.flat()).not.toContain('later');
    await pipeline.stop();
  });

  it('dead-letters a poison message under dead-letter and goes on', async () => {
    const { sink, pipeline, txn, watermark, events } = setup('dead-letter');
    sink.refuse.add('bad');
    txn('ok1', 'bad');
    txn('ok2');
    expect(await pipeline.drain(1000)).toBe(true);
    expect(events.halted).toBeNull();
    expect(sink.deadLetters.map((d) => d.id)).toEqual(['bad']);
    expect(sink.deadLetters[0]?.error.reason).toBe('oversized');
    expect(watermark.lsn).toBe(250n);
    await pipeline.stop();
  });

  it('disposes of mapping poison in order with the other messages', async () => {
    const { sink, pipeline, watermark } = setup('dead-letter');
    const t = watermark.begin(1, 100n, 0);
    pipeline.push(msg('m1', t), t);
    pipeline.pushPoison(nullKeyLetter('p', t, 1), t);
    pipeline.push(msg('m2', t), t);
    watermark.commit(t, 150n);
    expect(await pipeline.drain(1000)).toBe(true);
    expect(sink.batches).toEqual([['m1'], ['m2']]);
    expect(sink.deadLetters.map((d) => d.id)).toEqual(['p']);
    expect(watermark.lsn).toBe(150n);
    await pipeline.stop();
  });

  it('never retries a programming error from the client: the relay stops without confirming', async () => {
    const { sink, pipeline, txn, watermark, events } = setup();
    sink.failNext.push(new TypeError('The "string" argument must be of type string'));
    txn('x1');
    expect(await pipeline.drain(200)).toBe(false);
    expect(events.fatal).toBeInstanceOf(SinkError);
    expect((events.fatal as SinkError).retriable).toBe(false);
    expect((events.fatal as SinkError).reason).toBe('client_error');
    expect(sink.batches).toEqual([]);
    expect(watermark.lsn).toBe(0n);
    await pipeline.stop();
  });

  it('reports the sink stalled while a publish waits past the stall timeout, and clears it on the answer', async () => {
    const { sink, pipeline, txn, events } = setup('halt', { lingerMs: 0 });
    let open!: () => void;
    sink.gate = new Promise((r) => {
      open = r;
    });
    txn('s1');
    // The stall timeout is 20 ms here; wait for the report itself, not for a guessed time.
    await vi.waitFor(() => expect(events.stalls).toEqual([true]));
    open();
    sink.gate = null;
    expect(await pipeline.drain(1000)).toBe(true);
    expect(events.stalls).toEqual([true, false]);
    await pipeline.stop();
  });

  it('once halted, keeps the source waiting (no more WAL is read) until stopped', async () => {
    const { sink, pipeline, txn, events } = setup('halt');
    sink.refuse.add('bad');
    txn('bad');
    await pipeline.drain(200);
    expect(events.halted?.reason).toBe('oversized');
    const { waits } = txn('after');
    expect(waits[0]).toBeInstanceOf(Promise);
    let released = false;
    void waits[0]?.then(() => {
      released = true;
    });
    // Kept: no event marks "still waiting". 20 ms is many lingers (1 ms) and retries (≤ 2 ms):
    // a timer that released the source would have run.
    await new Promise((r) => setTimeout(r, 20));
    expect(released).toBe(false);
    await pipeline.stop();
    await until('the source released by stop()', async () => released, 1_000, 1);
  });

  it('never batches a message the sink can see is poison: under halt nothing after it is published', async () => {
    const { sink, pipeline, txn, watermark, events } = setup('halt');
    sink.refuseEarly.add('bad');
    txn('ok1', 'bad', 'after1');
    txn('after2');
    await pipeline.drain(200);
    expect(events.halted?.reason).toBe('field_too_long');
    expect(sink.batches.flat()).toEqual(['ok1']);
    expect(watermark.lsn).toBe(0n);
    await pipeline.stop();
  });
});
