import { describe, expect, it } from 'vitest';
import { PublishedUpTo } from '../../src/positions/published.js';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';
import { OutboxMapper, type TableBinding } from '../../src/outbox/mapper.js';
import { parseTemplate } from '../../src/config/template.js';
import { Ingest } from '../../src/pipeline/ingest.js';
import type { Relation } from '../../src/source/pgoutput.js';
import { FakeSink, startPipeline } from './fake-sink.js';

function setup() {
  const cfg = parseConfig(
    'postgres:\n  url: postgres://u@h/db\noutbox:\n  tables:\n    - name: public.outbox\n  onPoison: dead-letter\npipeline:\n  linger: 1ms\n',
    {},
  );
  const sink = new FakeSink();
  const { pipeline, watermark, events, metrics } = startPipeline(sink, {
    cfg: cfg.pipeline,
    policy: cfg.outbox.onPoison,
    stallTimeoutMs: 5_000,
  });
  const published = new PublishedUpTo();
  const ingest = new Ingest(
    cfg,
    new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}')),
    watermark,
    pipeline,
    metrics,
    createLogger('silent'),
    published,
  );
  return { ingest, pipeline, sink, advanced: events.advanced, published, metrics };
}

const relation = (names: string[], name = 'outbox'): Relation => ({
  relationOid: 16_385,
  schema: 'public',
  name,
  columns: names.map((n) => ({ name: n, typeOid: n === 'payload' ? 3802 : 25 })),
});
const COLUMNS = ['id', 'aggregatetype', 'aggregateid', 'payload', 'created_at'];
const TIMELINE_1 = { systemId: '7', database: 'db', timeline: 1, history: [] };

/** setup() with the outbox relation bound, and what an insert of a plain row takes: `row(id)`, `whole`. */
function boundOutbox() {
  const s = setup();
  const rel = relation(COLUMNS);
  const binding = s.ingest.relation(rel) as TableBinding;
  const row = (id: string) => [id, 'order', 'k', '{}', undefined];
  const whole = { wholeRow: () => ({}), problem: () => null };
  return { ...s, rel, binding, row, whole };
}

describe('Ingest', () => {
  it('refuses a mapped table without a required column, naming the config path', () => {
    const { ingest } = setup();
    let err: unknown;
    try {
      ingest.relation(relation(['id', 'aggregatetype', 'aggregateid', 'body']));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).message).toBe(
      'config outbox.tables[0].columns.payload: table public.outbox has no column "payload" (columns: id, aggregatetype, aggregateid, body)',
    );
  });

  it('asks for the mapped columns only, and for nothing of tables it does not map', () => {
    const { ingest } = setup();
    expect(ingest.relation(relation(COLUMNS))?.wanted).toEqual([true, true, true, true, false]);
    expect(ingest.relation({ ...relation(COLUMNS, 'orders'), relationOid: 7 })).toBeNull();
  });

  it('publishes a row, and dead-letters a poison row with every column of it', async () => {
    const { ingest, pipeline, sink, advanced } = setup();
    const rel = relation(COLUMNS);
    const binding = ingest.relation(rel) as TableBinding;
    const whole = { id: 'i-2', aggregatetype: 'order', aggregateid: null, payload: '{}', created_at: '2026-01-01 00:00:00+00' };
    ingest.begin(742, 0x100n, 0);
    ingest.insert(rel, binding, ['i-1', 'order', 'k-1', '{"a":1}', undefined], { wholeRow: () => ({}), problem: () => null });
    ingest.insert(rel, binding, ['i-2', 'order', null, '{}', undefined], { wholeRow: () => whole, problem: () => null });
    ingest.commit(0x180n);
    expect(await pipeline.drain(5_000)).toBe(true);
    expect(sink.published.map((m) => [m.id, m.key, m.destination, m.payload])).toEqual([['i-1', 'k-1', 'outbox.event.order', '{"a":1}']]);
    expect(sink.deadLetters).toHaveLength(1);
    expect(sink.deadLetters[0]?.error.reason).toBe('null_key');
    expect(JSON.parse(sink.deadLetters[0]?.payload as string)).toEqual(whole);
    // Both messages settled: the transaction's end is the watermark.
    expect(advanced.at(-1)).toBe(0x180n);
    await pipeline.stop();
  });

  it('dead-letters a row whose value is oversized or not UTF-8, naming the column', async () => {
    const { ingest, pipeline, sink } = setup();
    const rel = relation(COLUMNS);
    const binding = ingest.relation(rel) as TableBinding;
    ingest.begin(743, 0x200n, 0);
    const whole = { id: 'i-3', aggregatetype: 'order', aggregateid: 'k', payload: null, created_at: 'ts' };
    ingest.insert(rel, binding, ['i-3', 'order', 'k', undefined, undefined], {
      wholeRow: () => whole,
      problem: () => ({ reason: 'oversized', column: 'payload', bytes: 300_000_000 }),
    });
    ingest.insert(rel, binding, ['i-4', 'order', 'k', undefined, undefined], {
      wholeRow: () => whole,
      problem: () => ({ reason: 'bad_encoding', column: 'payload', bytes: 4 }),
    });
    ingest.commit(0x280n);
    expect(await pipeline.drain(5_000)).toBe(true);
    expect(sink.published).toEqual([]);
    expect(sink.deadLetters.map((l) => [l.id, l.error.reason, l.error.message])).toEqual([
      ['i-3', 'oversized', `column payload holds 300000000 bytes, over the sink's message limit of ${ingest.maxValueBytes} bytes`],
      ['i-4', 'bad_encoding', 'column payload holds bytes that are not valid UTF-8'],
    ]);
    await pipeline.stop();
  });

  it('exactly-once restart: skips every event at or before the checkpoint, also inside a transaction, and confirms past them', async () => {
    const { ingest, pipeline, sink, advanced, published, rel, binding, row, whole } = boundOutbox();
    // Kafka holds everything of 0x100, and the first two events of 0x200.
    published.restart(TIMELINE_1, { commitLsn: 0x200n, index: 1, timeline: 1 });
    ingest.begin(1, 0x100n, 0);
    ingest.insert(rel, binding, row('a'), whole);
    ingest.commit(0x180n);
    ingest.begin(2, 0x200n, 0);
    for (const id of ['b', 'c', 'd', 'e']) ingest.insert(rel, binding, row(id), whole);
    ingest.commit(0x280n);
    ingest.begin(3, 0x300n, 0);
    ingest.insert(rel, binding, row('f'), whole);
    ingest.commit(0x380n);
    expect(await pipeline.drain(5_000)).toBe(true);
    expect(sink.published.map((m) => [m.id, m.index])).toEqual([
      ['d', 2],
      ['e', 3],
      ['f', 0],
    ]);
    expect(advanced.at(-1)).toBe(0x380n);
    await pipeline.stop();
  });

  it('exactly-once after a promotion: skips what the old timeline’s checkpoint proves (shared WAL), publishes and counts the rest it covers', async () => {
    const { ingest, pipeline, sink, published, metrics, rel, binding, row, whole } = boundOutbox();
    // Timeline 1 went on to 0x900 (Kafka holds it all); this server left it at 0x300.
    published.restart(
      { systemId: '7', database: 'db', timeline: 2, history: [{ timeline: 1, switchLsn: 0x300n }] },
      {
        commitLsn: 0x900n,
        index: 0,
        timeline: 1,
      },
    );
    ingest.begin(1, 0x200n, 0);
    ingest.insert(rel, binding, row('shared'), whole);
    ingest.commit(0x280n);
    for (const [i, at] of [0x400n, 0x600n, 0x900n, 0xa00n].entries()) {
      ingest.begin(2 + i, at, 0);
      ingest.insert(rel, binding, row(`new-${i}`), whole);
      ingest.commit(at + 0x10n);
    }
    expect(await pipeline.drain(5_000)).toBe(true);
    expect(sink.published.map((m) => m.id)).toEqual(['new-0', 'new-1', 'new-2', 'new-3']);
    const counted = async (name: string) => (await metrics.registry.getSingleMetric(name)?.get())?.values[0]?.value;
    expect(await counted('outboxd_checkpoint_skipped_total')).toBe(1);
    // 0x400, 0x600 and 0x900 lie at or below the checkpoint by number: unproven. 0xa00 is simply new.
    expect(await counted('outboxd_checkpoint_unproven_total')).toBe(3);
    await pipeline.stop();
  });
});
