import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { createLogger } from '../../src/observability/logger.js';
import { OutboxMapper, type TableBinding } from '../../src/outbox/mapper.js';
import { parseTemplate } from '../../src/config/template.js';
import { FENCE_PREFIX, type Fence, type FenceGate, parseFence } from '../../src/pipeline/fence.js';
import { Ingest } from '../../src/pipeline/ingest.js';
import { PublishedUpTo } from '../../src/positions/published.js';
import { EMPTY_MARKER, formatMarker, parseMarker, withReshard, withoutSlot } from '../../src/postgres/marker.js';
import type { Relation } from '../../src/source/pgoutput.js';
import { FakeSink, startPipeline } from './fake-sink.js';

/**
 * The ingest's side of a reshard (docs/adr/0020-shards.md; the relays run in
 * test/faults/reshard.test.ts): what a gate discards is neither published nor waited for, and a
 * fence's transaction holds the watermark until the gate releases it, so the slot never passes a
 * fence whose outcome is not yet recorded.
 */

class FakeGate implements FenceGate {
  discarding = false;
  fences: Fence[] = [];
  release: (() => void) | null = null;
  atFence(fence: Fence, release: () => void): Promise<void> | undefined {
    this.fences.push(fence);
    this.release = release;
    return undefined;
  }
}

const COLUMNS = ['id', 'aggregatetype', 'aggregateid', 'payload'];
const relation: Relation = {
  relationOid: 16_385,
  schema: 'public',
  name: 'outbox',
  columns: COLUMNS.map((n) => ({ name: n, typeOid: n === 'payload' ? 3802 : 25 })),
};

function setup() {
  const cfg = parseConfig('postgres:\n  url: postgres://u@h/db\npipeline:\n  linger: 1ms\n', {});
  const sink = new FakeSink();
  const { pipeline, watermark, events, metrics } = startPipeline(sink, { cfg: cfg.pipeline, policy: 'halt', stallTimeoutMs: 5_000 });
  const mapper = new OutboxMapper(parseTemplate('outbox.event.{aggregatetype}'));
  const ingest = new Ingest(cfg, mapper, watermark, pipeline, metrics, createLogger('silent'), new PublishedUpTo());
  const gate = new FakeGate();
  ingest.gate = gate;
  const binding = ingest.relation(relation) as TableBinding;
  const row = (id: string) => ingest.insert(relation, binding, [id, 'order', 'k', '{}'], { wholeRow: () => ({}), problem: () => null });
  return { ingest, pipeline, sink, gate, row, advanced: events.advanced };
}

const fence = (f: object) => Buffer.from(JSON.stringify(f));

describe('a reshard fence in the stream', () => {
  it('holds the watermark at its transaction until the gate releases it', async () => {
    const { ingest, pipeline, sink, gate, row, advanced } = setup();
    ingest.begin(1, 0x100n, 0);
    row('before');
    ingest.commit(0x180n);
    ingest.begin(2, 0x200n, 0);
    ingest.message(FENCE_PREFIX, fence({ id: 'r1', retire: ['a'], start: ['b'] }), 40, true, 0x1f0n);
    ingest.commit(0x280n);
    ingest.begin(3, 0x300n, 0);
    row('after');
    ingest.commit(0x380n);
    expect(await pipeline.drain(5_000)).toBe(true);
    expect(gate.fences).toEqual([{ id: 'r1', retire: ['a'], start: ['b'] }]);
    expect(sink.published.map((m) => m.id)).toEqual(['before', 'after']);
    // Everything is confirmed, but the watermark stays before the fence's transaction.
    expect(advanced.at(-1)).toBe(0x180n);
    gate.release?.();
    expect(advanced.at(-1)).toBe(0x380n);
    await pipeline.stop();
  });

  it('discards rows and outbox messages while the gate says so, and lets the watermark pass them', async () => {
    const { ingest, pipeline, sink, gate, row, advanced } = setup();
    gate.discarding = true;
    ingest.begin(1, 0x100n, 0);
    row('old');
    ingest.message('outbox', Buffer.from('{"id":"m","aggregatetype":"t","aggregateid":"k","payload":{}}'), 60, true, 0x150n);
    ingest.commit(0x180n);
    expect(await pipeline.drain(5_000)).toBe(true);
    ingest.keepalive(0x190n);
    expect(sink.published).toEqual([]);
    expect(advanced.at(-1)).toBe(0x190n);
    await pipeline.stop();
  });

  it('is read only when it is a transactional message naming both sets', () => {
    expect(parseFence(fence({ id: 'r', retire: ['a'], start: ['b', 'c'] }))).toEqual({ id: 'r', retire: ['a'], start: ['b', 'c'] });
    for (const bad of [{ id: 1, retire: [], start: [] }, { id: 'r', retire: 'a', start: [] }, { id: 'r' }])
      expect(parseFence(fence(bad))).toBeNull();
    expect(parseFence(Buffer.from('not json'))).toBeNull();
    expect(parseFence(null)).toBeNull();
  });
});

describe("a slot's part in a reshard, in the marker", () => {
  it('round-trips beside the other slots and is removed with its slot', () => {
    const peers = [{ slot: 'old_0_of_2', publication: 'pub_0_of_2' }];
    const m = withReshard(EMPTY_MARKER, 'new_0_of_3', { id: 'r1', state: 'waiting', peers });
    // Written before the slot exists: it is not recorded as a slot (that would read as a lost one).
    expect(m.slots).toEqual([]);
    const read = parseMarker(formatMarker(m)).marker;
    expect(read.reshards?.get('new_0_of_3')).toEqual({ id: 'r1', state: 'waiting', peers });
    expect(parseMarker(formatMarker(withoutSlot(read, 'new_0_of_3'))).marker.reshards).toBeUndefined();
    // An entry this version cannot read is dropped, not misread.
    expect(parseMarker('outboxd:{"v":2,"slots":[],"reshards":{"s":{"id":"r","state":"done"}}}').marker.reshards).toBeUndefined();
  });
});
