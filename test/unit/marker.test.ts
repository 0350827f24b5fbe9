import { describe, expect, it } from 'vitest';
import { floorOf } from '../../src/postgres/prune-floor.js';
import {
  EMPTY_MARKER,
  type Marker,
  formatMarker,
  parseMarker,
  withEpoch,
  withRecovery,
  withSlot,
  withoutSlot,
} from '../../src/postgres/marker.js';

const epoch = (xid: string) => ({ xid, since: '2026-12-01 00:00:00+00', at: '2026-12-01T00:00:01.000Z' });

describe('the lost-slot marker', () => {
  it('keeps an epoch per slot: one relay recording its own leaves the other relay’s as it was', () => {
    let m = withEpoch(withSlot(EMPTY_MARKER, 'kafka_relay'), 'kafka_relay', epoch('900'));
    m = withEpoch(withSlot(m, 'rabbit_relay'), 'rabbit_relay', epoch('500'));
    m = withEpoch(m, 'kafka_relay', epoch('1200'));
    const read = parseMarker(formatMarker(m)).marker;
    expect(read.slots).toEqual(['kafka_relay', 'rabbit_relay']);
    expect(read.epochs.get('kafka_relay')?.xid).toBe('1200');
    expect(read.epochs.get('rabbit_relay')?.xid).toBe('500');
  });

  it('reads a v1 marker: its one epoch belongs to its only slot, and its recovery to the slot it names', () => {
    const v1 = `outboxd:${JSON.stringify({
      slots: ['only'],
      confirmedXid: '777',
      confirmedSince: 's',
      confirmedAt: 'a',
      recovering: { slot: 'only', fromXid: '700', since: 's', reason: 'dropped' },
    })}`;
    const { marker } = parseMarker(v1);
    expect(marker.epochs.get('only')).toEqual({ xid: '777', since: 's', at: 'a' });
    expect(marker.recoveries.get('only')).toEqual({ fromXid: '700', since: 's', reason: 'dropped' });
  });

  it('does not give a v1 epoch to any slot when the marker records several: it cannot tell whose it is', () => {
    const { marker } = parseMarker(`outboxd:${JSON.stringify({ slots: ['a', 'b'], confirmedXid: '777' })}`);
    expect(marker.slots).toEqual(['a', 'b']);
    expect(marker.epochs.size).toBe(0);
  });

  it('writes a recovery also in v1 form, so that an older relay’s write keeps it', () => {
    const m = withRecovery(withSlot(EMPTY_MARKER, 'a'), 'a', { fromXid: '42', since: 's', reason: 'invalidated' });
    const doc = JSON.parse(formatMarker(m).slice('outboxd:'.length)) as Record<string, unknown>;
    expect(doc.recovering).toEqual({ slot: 'a', fromXid: '42', since: 's', reason: 'invalidated' });
    expect(doc.v).toBe(2);
  });

  it('keeps fields it does not know, and drops none of another slot’s when one slot is removed', () => {
    const { marker, rest } = parseMarker(
      `outboxd:${JSON.stringify({ v: 3, slots: ['a', 'b'], future: { x: 1 }, epochs: { a: epoch('1'), b: epoch('2') } })}`,
    );
    const out = parseMarker(formatMarker(withoutSlot(marker, 'a'), rest));
    expect(out.rest).toEqual({ future: { x: 1 } });
    expect(out.marker.slots).toEqual(['b']);
    expect([...out.marker.epochs.keys()]).toEqual(['b']);
  });

  it('reads anything that is not an outboxd marker as an empty one', () => {
    for (const c of [null, '', 'a comment of the DBA', 'outboxd:{not json', 'outboxd:[1,2]', 'outboxd:null'])
      expect(parseMarker(c).marker).toEqual(EMPTY_MARKER);
  });

  it('ignores an epoch whose xid is not a whole number', () => {
    const { marker } = parseMarker(`outboxd:${JSON.stringify({ slots: ['a'], epochs: { a: { xid: '12; DROP' } } })}`);
    expect(marker.epochs.size).toBe(0);
  });
});

describe('the prune floor', () => {
  const markers = (...ms: Array<[string, Marker]>) => new Map(ms);

  it('is the smallest epoch of every slot on every publication of the table', () => {
    const a = withEpoch(withEpoch(EMPTY_MARKER, 'kafka_relay', epoch('900')), 'rabbit_relay', epoch('500'));
    const b = withEpoch(EMPTY_MARKER, 'shard_1', epoch('700'));
    expect(floorOf(markers(['pub_a', a], ['pub_b', b]))).toEqual({ kind: 'epoch', xid: 500n, slot: 'rabbit_relay', publication: 'pub_a' });
  });

  it('holds everything while a recorded slot has no epoch yet, naming it', () => {
    const a = withSlot(withEpoch(EMPTY_MARKER, 'kafka_relay', epoch('900')), 'new_relay');
    expect(floorOf(markers(['pub', a]))).toEqual({ kind: 'held', slot: 'new_relay', publication: 'pub' });
  });

  it('is null when no slot is recorded for the table', () => {
    expect(floorOf(markers(['pub', EMPTY_MARKER]))).toBeNull();
    expect(floorOf(markers())).toBeNull();
  });

  it('compares xids as 64-bit numbers, not as text', () => {
    const a = withEpoch(withEpoch(EMPTY_MARKER, 'x', epoch('10000000000')), 'y', epoch('9'));
    expect(floorOf(markers(['p', a]))).toMatchObject({ xid: 9n, slot: 'y' });
  });
});
