import { describe, expect, it } from 'vitest';
import type { PipelineConfig } from '../../src/config/config.js';
import { SinkError } from '../../src/errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../../src/interfaces.js';
import type { Txn } from '../../src/positions/watermark.js';
import { until } from '../harness/wait.js';
import { nullKeyLetter, startPipeline } from './fake-sink.js';

/**
 * Two batches at the broker at once (Sink.batchesInFlight = 2, pipeline/overlap.ts), against a
 * sink whose every publish the test confirms or fails by hand.
 */
interface Call {
  readonly ids: string[];
  confirm(): void;
  fail(err: Error): void;
  settled: boolean;
}

class HeldSink implements Sink {
  readonly type = 'stdout' as const;
  calls: Call[] = [];
  deadLetters: string[] = [];
  resets = 0;
  /** The ids in the order the sink confirmed them. */
  confirmed: string[] = [];
  constructor(readonly batchesInFlight: 1 | 2 | undefined) {}
  async connect() {}
  check() {
    return null;
  }
  publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    return new Promise((resolve, reject) => {
      const call: Call = {
        ids: batch.map((m) => m.id),
        settled: false,
        confirm: () => {
          call.settled = true;
          this.confirmed.push(...call.ids);
          resolve({ poisoned: [] });
        },
        fail: (err) => {
          call.settled = true;
          reject(err);
        },
      };
      this.calls.push(call);
    });
  }
  /** While set, dead letters wait for it. */
  letterGate: Promise<void> | null = null;
  async publishDeadLetter(letter: DeadLetter) {
    if (this.letterGate) await this.letterGate;
    this.deadLetters.push(String(letter.id));
  }
  async reset() {
    this.resets++;
  }
  async close() {}
  open(): Call[] {
    return this.calls.filter((c) => !c.settled);
  }
}

const cfg: PipelineConfig = {
  maxInFlightMessages: 100,
  maxInFlightBytes: 1_000_000,
  batchMaxMessages: 4,
  batchMaxBytes: 1_000_000,
  lingerMs: 1,
  retry: { initialMs: 1, maxMs: 2 },
};

function setup(batchesInFlight: 1 | 2 | undefined = 2) {
  const sink = new HeldSink(batchesInFlight);
  const { pipeline, watermark, events } = startPipeline(sink, { cfg, policy: 'dead-letter', stallTimeoutMs: 5_000 });
  let xid = 0;
  /** One committed transaction of messages given as `id:key`. */
  const txn = (...specs: string[]): Txn => {
    xid++;
    const t = watermark.begin(xid, BigInt(xid * 100), Date.now());
    for (const spec of specs) {
      const [id, key] = spec.split(':') as [string, string];
      pipeline.push(message(id, key, t), t);
    }
    watermark.commit(t, BigInt(xid * 100 + 50));
    return t;
  };
  const calls = (n: number) => until(`${n} publish calls`, async () => sink.calls.length >= n, 1_000, 1);
  return { sink, pipeline, watermark, events, txn, calls };
}

function message(id: string, key: string, txn: Txn): OutboxMessage {
  return {
    id,
    destination: 'd',
    key,
    aggregateType: 'a',
    type: null,
    payload: 'x',
    contentType: 'text/plain',
    headers: {},
    correlationId: null,
    replyTo: null,
    txn,
    index: 0,
    sizeBytes: 10,
  };
}

const settle = () => new Promise((r) => setTimeout(r, 20));

describe('two batches at the broker', () => {
  it('sends the next batch while the one before waits for its confirms, and no third', async () => {
    const { sink, pipeline, txn, calls, watermark } = setup();
    txn('a1:a', 'b1:b', 'c1:c', 'd1:d');
    await calls(1);
    txn('e1:e', 'f1:f', 'g1:g', 'h1:h');
    await calls(2);
    txn('i1:i', 'j1:j', 'k1:k', 'l1:l');
    await settle();
    expect(sink.calls.map((c) => c.ids)).toEqual([
      ['a1', 'b1', 'c1', 'd1'],
      ['e1', 'f1', 'g1', 'h1'],
    ]);
    // The second is confirmed first: the watermark waits for the first.
    sink.calls[1]?.confirm();
    await calls(3);
    expect(watermark.lsn).toBe(0n);
    sink.calls[0]?.confirm();
    sink.calls[2]?.confirm();
    expect(await pipeline.drain(1_000)).toBe(true);
    expect(watermark.lsn).toBe(350n);
    await pipeline.stop();
  });

  it('with one batch in flight allowed, never sends a second beside it', async () => {
    const { sink, pipeline, txn, calls } = setup(1);
    txn('a1:a', 'b1:b', 'c1:c', 'd1:d');
    await calls(1);
    txn('e1:e', 'f1:f', 'g1:g', 'h1:h');
    await settle();
    expect(sink.calls).toHaveLength(1);
    sink.calls[0]?.confirm();
    await calls(2);
    sink.calls[1]?.confirm();
    expect(await pipeline.drain(1_000)).toBe(true);
    await pipeline.stop();
  });

  it('keeps back the messages of a key (or an id) at the broker, in order, until it is done', async () => {
    const { sink, pipeline, txn, calls } = setup();
    txn('x1:x', 'y1:y', 'dup:w', 'v1:v');
    await calls(1);
    txn('x2:x', 'dup:u', 'u2:u', 'z1:z', 'x3:x', 'q1:q');
    await calls(2);
    // Beside the first, of the four taken: only what shares neither key nor id with it. u2 waits
    // behind dup, of the same key, though u2 itself shares nothing with the batch at the broker.
    expect(sink.calls[1]?.ids).toEqual(['z1']);
    sink.calls[1]?.confirm();
    // The next four taken are the three that waited and x3: all wait again, and q1 behind them.
    await settle();
    expect(sink.calls).toHaveLength(2);
    sink.calls[0]?.confirm();
    await calls(3);
    expect(sink.calls[2]?.ids).toEqual(['x2', 'dup', 'u2', 'x3']);
    await calls(4);
    expect(sink.calls[3]?.ids).toEqual(['q1']);
    for (const c of sink.open()) c.confirm();
    expect(await pipeline.drain(1_000)).toBe(true);
    await pipeline.stop();
  });

  it('retries a failed batch first, the one beside it only after it, and keeps every key in order', async () => {
    const { sink, pipeline, txn, calls, watermark } = setup();
    txn('a1:a', 'b1:b', 'a2:a', 'c1:c');
    await calls(1);
    txn('a3:a', 'd1:d', 'e1:e', 'b2:b', 'f1:f');
    await calls(2);
    expect(sink.calls[1]?.ids).toEqual(['d1', 'e1']);
    // The connection drops under both.
    sink.calls[0]?.fail(new SinkError('channel_closed', 'gone', { retriable: true }));
    sink.calls[1]?.fail(new SinkError('channel_closed', 'gone', { retriable: true }));
    await calls(3);
    await settle();
    // The first batch's retry alone: the second's waits for it, and nothing new goes beside.
    expect(sink.open().map((c) => c.ids)).toEqual([['a1', 'b1', 'a2', 'c1']]);
    sink.open()[0]?.confirm();
    await calls(4);
    expect(sink.open().map((c) => c.ids)).toContainEqual(['d1', 'e1']);
    while (sink.open().length > 0 || !(await pipeline.drain(50))) for (const c of sink.open()) c.confirm();
    // Every key's messages confirmed in commit order.
    const order = sink.confirmed;
    expect(order.filter((id) => id.startsWith('a'))).toEqual(['a1', 'a2', 'a3']);
    expect(order.filter((id) => id.startsWith('b'))).toEqual(['b1', 'b2']);
    expect(watermark.lsn).toBe(250n);
    await pipeline.stop();
  });

  it('sends nothing beside a batch that is being retried', async () => {
    const { sink, pipeline, txn, calls } = setup();
    txn('a1:a', 'b1:b', 'c1:c', 'd1:d');
    await calls(1);
    txn('e1:e', 'f1:f', 'g1:g', 'h1:h');
    await calls(2);
    sink.calls[0]?.fail(new SinkError('channel_closed', 'gone', { retriable: true }));
    sink.calls[1]?.confirm();
    await calls(3);
    expect(sink.calls[2]?.ids).toEqual(['a1', 'b1', 'c1', 'd1']);
    txn('i1:i', 'j1:j', 'k1:k', 'l1:l');
    await settle();
    expect(sink.calls).toHaveLength(3);
    sink.calls[2]?.confirm();
    await calls(4);
    expect(sink.calls[3]?.ids).toEqual(['i1', 'j1', 'k1', 'l1']);
    sink.calls[3]?.confirm();
    expect(await pipeline.drain(1_000)).toBe(true);
    await pipeline.stop();
  });

  it('publishes a lone message that arrives after a batch was confirmed', async () => {
    const { sink, pipeline, txn, calls } = setup();
    txn('a1:a', 'b1:b', 'c1:c', 'd1:d');
    await calls(1);
    sink.calls[0]?.confirm();
    expect(await pipeline.drain(1_000)).toBe(true);
    txn('e1:e');
    await calls(2);
    expect(sink.calls[1]?.ids).toEqual(['e1']);
    sink.calls[1]?.confirm();
    expect(await pipeline.drain(1_000)).toBe(true);
    await pipeline.stop();
  });

  it('disposes of a poison item only once the batch before it is done, and sends nothing beside it', async () => {
    const { sink, pipeline, txn, calls, watermark } = setup();
    txn('a1:a', 'b1:b', 'c1:c', 'd1:d');
    await calls(1);
    const t = watermark.begin(99, 9_900n, Date.now());
    pipeline.pushPoison(nullKeyLetter('p', t, 0), t);
    pipeline.push(message('e1', 'e', t), t);
    watermark.commit(t, 9_950n);
    let open!: () => void;
    sink.letterGate = new Promise((r) => {
      open = r;
    });
    await settle();
    expect(sink.calls).toHaveLength(1);
    sink.calls[0]?.confirm();
    // The dead letter is on its way: e1, after it, waits for it.
    await settle();
    expect(sink.calls).toHaveLength(1);
    open();
    await calls(2);
    expect(sink.deadLetters).toEqual(['p']);
    expect(sink.calls[1]?.ids).toEqual(['e1']);
    sink.calls[1]?.confirm();
    expect(await pipeline.drain(1_000)).toBe(true);
    await pipeline.stop();
  });
});
