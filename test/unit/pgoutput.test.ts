import { describe, expect, it } from 'vitest';
import { OutboxdError } from '../../src/errors.js';
import type { ColumnValues, IgnoredKind, PgoutputHandler, Relation, TableInterest, WholeRow } from '../../src/source/pgoutput.js';
import { PgoutputDecoder, WITHHELD_CONTENT, WITHHELD_VALUE } from '../../src/source/pgoutput.js';
import { Wire, ch, relationMsg } from './pgoutput-wire.js';

/** 2026-01-01T00:00:00.123Z in microseconds since 2000-01-01. */
const COMMIT_US = (BigInt(Date.UTC(2026, 0, 1, 0, 0, 0, 123)) - 946_684_800_000n) * 1000n + 456n;

class Recorder implements PgoutputHandler {
  maxValueBytes = 1024;
  problems: unknown[] = [];
  calls: unknown[][] = [];
  wanted: ReadonlyArray<boolean> | null = null;
  whole: Record<string, string | null> | null = null;
  takeWhole = false;
  begin(xid: number, commitLsn: bigint, commitTimeMs: number): void {
    this.calls.push(['begin', xid, commitLsn, commitTimeMs]);
  }
  relation(rel: Relation): TableInterest | null {
    this.calls.push(['relation', rel.schema, rel.name, rel.columns.map((c) => `${c.name}:${c.typeOid}`)]);
    return this.wanted === null ? null : { wanted: this.wanted };
  }
  insert(rel: Relation, _table: TableInterest, values: ColumnValues, row: WholeRow): undefined {
    this.calls.push(['insert', rel.name, [...values]]);
    if (row.problem()) this.problems.push(row.problem());
    if (this.takeWhole) this.whole = row.wholeRow();
    return undefined;
  }
  message(prefix: string, content: Buffer | null, length: number, transactional: boolean, lsn: bigint): undefined {
    this.calls.push(['message', prefix, content, length, transactional, lsn]);
    return undefined;
  }
  ignore(kind: IgnoredKind): void {
    this.calls.push(['ignore', kind]);
  }
  commit(endLsn: bigint): void {
    this.calls.push(['commit', endLsn]);
  }
}

const decode = (d: PgoutputDecoder, msg: Buffer): unknown => {
  // As on the wire: the message sits after a 25-byte XLogData header inside a bigger buffer.
  const framed = Buffer.concat([Buffer.alloc(25, 0x77), msg, Buffer.from('trailing')]);
  return d.decode(framed, 25, 25 + msg.length);
};

const cols: Array<[string, number]> = [
  ['id', 2950],
  ['aggregatetype', 25],
  ['aggregateid', 25],
  ['payload', 3802],
  ['created_at', 1184],
];

describe('PgoutputDecoder', () => {
  it('decodes BEGIN and COMMIT: LSNs as bigints, the commit time in Unix ms', () => {
    const r = new Recorder();
    const d = new PgoutputDecoder(r);
    decode(d, new Wire().u8(ch('B')).u64(0x1_0000_00a0n).u64(COMMIT_US).u32(4_000_000_000).build());
    decode(d, new Wire().u8(ch('C')).u8(0).u64(0x1_0000_00a0n).u64(0x1_0000_00f8n).u64(COMMIT_US).build());
    expect(r.calls).toEqual([
      ['begin', 4_000_000_000, 0x1_0000_00a0n, Date.UTC(2026, 0, 1, 0, 0, 0, 123)],
      ['commit', 0x1_0000_00f8n],
    ]);
  });

  it('decodes only the columns the handler asked for, and the whole row on demand', () => {
    const r = new Recorder();
    r.wanted = [true, true, true, true, false];
    r.takeWhole = true;
    const d = new PgoutputDecoder(r);
    decode(d, relationMsg(16_385, 'public', 'outbox', cols));
    const insert = new Wire()
      .u8(ch('I'))
      .u32(16_385)
      .u8(ch('N'))
      .u16(5)
      .text('c5c67e67-e7fc-4606-85d4-acfc4a079bfa')
      .text('bestellung')
      .u8(ch('n'))
      .text('{"straße": "Üb€r 🚚"}')
      .text('2026-01-01 00:00:00+00')
      .build();
    decode(d, insert);
    expect(r.calls).toEqual([
      ['relation', 'public', 'outbox', ['id:2950', 'aggregatetype:25', 'aggregateid:25', 'payload:3802', 'created_at:1184']],
      ['insert', 'outbox', ['c5c67e67-e7fc-4606-85d4-acfc4a079bfa', 'bestellung', null, '{"straße": "Üb€r 🚚"}', undefined]],
    ]);
    expect(r.whole).toEqual({
      id: 'c5c67e67-e7fc-4606-85d4-acfc4a079bfa',
      aggregatetype: 'bestellung',
      aggregateid: null,
      payload: '{"straße": "Üb€r 🚚"}',
      created_at: '2026-01-01 00:00:00+00',
    });
  });

  it('keeps a column named __proto__ or constructor in the whole row, as an ordinary member', () => {
    const r = new Recorder();
    r.wanted = [true, false, false];
    r.takeWhole = true;
    const d = new PgoutputDecoder(r);
    decode(
      d,
      relationMsg(16_386, 'public', 'outbox', [
        ['id', 25],
        ['__proto__', 25],
        ['constructor', 25],
      ]),
    );
    decode(d, new Wire().u8(ch('I')).u32(16_386).u8(ch('N')).u16(3).text('i-1').text('x').text('y').build());
    expect(Object.keys(r.whole ?? {})).toEqual(['id', '__proto__', 'constructor']);
    expect(JSON.stringify(r.whole)).toBe('{"id":"i-1","__proto__":"x","constructor":"y"}');
  });

  it('names pg_catalog, which pgoutput sends as an empty namespace', () => {
    const r = new Recorder();
    new PgoutputDecoder(r).decode(relationMsg(1, '', 't', [['a', 25]]), 0, relationMsg(1, '', 't', [['a', 25]]).length);
    expect(r.calls[0]).toEqual(['relation', 'pg_catalog', 't', ['a:25']]);
  });

  it('skips inserts into tables the handler does not map, unread, and counts the other changes', () => {
    const r = new Recorder();
    r.wanted = null;
    const d = new PgoutputDecoder(r);
    decode(d, relationMsg(7, 'public', 'orders', [['x', 25]]));
    decode(d, new Wire().u8(ch('I')).u32(7).u8(ch('N')).u16(1).text('v').build());
    decode(d, new Wire().u8(ch('U')).u32(7).u8(ch('N')).u16(1).text('v').build());
    decode(d, new Wire().u8(ch('D')).u32(7).u8(ch('K')).u16(1).text('v').build());
    decode(d, new Wire().u8(ch('T')).u32(1).u8(0).u32(7).build());
    decode(d, new Wire().u8(ch('O')).u64(5n).str('origin').build());
    decode(d, new Wire().u8(ch('Y')).u32(99).str('s').str('t').build());
    expect(r.calls.slice(1)).toEqual([
      ['ignore', 'unconfigured_table'],
      ['ignore', 'update'],
      ['ignore', 'delete'],
      ['ignore', 'truncate'],
    ]);
  });

  it('copies a logical message content out of the socket buffer', () => {
    const r = new Recorder();
    const d = new PgoutputDecoder(r);
    const msg = new Wire().u8(ch('M')).u8(1).u64(0x5000n).str('outbox').u32(7).bytes(Buffer.from('{"a":1}')).build();
    const framed = Buffer.concat([Buffer.alloc(25), msg]);
    d.decode(framed, 25, framed.length);
    framed.fill(0); // the socket parser reuses its buffer
    expect(r.calls).toEqual([['message', 'outbox', Buffer.from('{"a":1}'), 7, true, 0x5000n]]);
  });

  it('leaves a value over the size limit undecoded and reports it, and a message over it uncopied', () => {
    const r = new Recorder();
    r.maxValueBytes = 16;
    r.wanted = [true, true, true, true, false];
    r.takeWhole = true;
    const d = new PgoutputDecoder(r);
    decode(d, relationMsg(16_385, 'public', 'outbox', cols));
    const big = '{"blob": "0123456789abcdef"}';
    decode(d, new Wire().u8(ch('I')).u32(16_385).u8(ch('N')).u16(5).text('i-1').text('t').text('k').text(big).text('ts').build());
    expect(r.calls.at(-1)).toEqual(['insert', 'outbox', ['i-1', 't', 'k', undefined, undefined]]);
    expect(r.problems).toEqual([{ reason: 'oversized', column: 'payload', bytes: Buffer.byteLength(big) }]);
    expect(r.whole).toMatchObject({ id: 'i-1', payload: null, created_at: 'ts' });
    decode(d, new Wire().u8(ch('M')).u8(1).u64(0x5000n).str('outbox').u32(17).bytes(Buffer.alloc(17, 0x61)).build());
    expect(r.calls.at(-1)).toEqual(['message', 'outbox', null, 17, true, 0x5000n]);
  });

  it('reports a value the socket withheld as oversized with its length, and a withheld content as null with its', () => {
    const r = new Recorder();
    r.wanted = [true, true, true, true, false];
    r.takeWhole = true;
    const d = new PgoutputDecoder(r);
    decode(d, relationMsg(16_385, 'public', 'outbox', cols));
    const huge = 128 * 1024 * 1024;
    const row = new Wire().u8(ch('I')).u32(16_385).u8(ch('N')).u16(5).text('i-1').text('t').text('k').u8(WITHHELD_VALUE).u32(huge);
    decode(
      d,
      row
        .u8(WITHHELD_VALUE)
        .u32(huge + 1)
        .build(),
    );
    expect(r.calls.at(-1)).toEqual(['insert', 'outbox', ['i-1', 't', 'k', undefined, undefined]]);
    // The column it reads is reported; the one it does not read (created_at) is not.
    expect(r.problems).toEqual([{ reason: 'oversized', column: 'payload', bytes: huge }]);
    expect(r.whole).toEqual({ id: 'i-1', aggregatetype: 't', aggregateid: 'k', payload: null, created_at: null });
    decode(
      d,
      new Wire()
        .u8(ch('M'))
        .u8(1 | WITHHELD_CONTENT)
        .u64(0x5000n)
        .str('outbox')
        .u32(huge)
        .build(),
    );
    expect(r.calls.at(-1)).toEqual(['message', 'outbox', null, huge, true, 0x5000n]);
  });

  it('never turns bytes that are not UTF-8 into replacement characters; real U+FFFD passes', () => {
    const r = new Recorder();
    r.wanted = [true, true];
    const d = new PgoutputDecoder(r);
    decode(
      d,
      relationMsg(9, 'public', 'outbox', [
        ['id', 25],
        ['payload', 25],
      ]),
    );
    const bad = new Wire()
      .u8(ch('I'))
      .u32(9)
      .u8(ch('N'))
      .u16(2)
      .text('i')
      .u8(ch('t'))
      .u32(4)
      .bytes(Buffer.from([0x63, 0x61, 0x66, 0xe9]))
      .build();
    decode(d, bad);
    expect(r.calls.at(-1)).toEqual(['insert', 'outbox', ['i', undefined]]);
    expect(r.problems).toEqual([{ reason: 'bad_encoding', column: 'payload', bytes: 4 }]);
    decode(d, new Wire().u8(ch('I')).u32(9).u8(ch('N')).u16(2).text('j').text('a\uFFFDb').build());
    expect(r.calls.at(-1)).toEqual(['insert', 'outbox', ['j', 'a\uFFFDb']]);
    expect(r.problems).toHaveLength(1);
  });

  it('fails with a PG_PROTOCOL error on truncated or unknown input, never reading past the message', () => {
    const r = new Recorder();
    r.wanted = [true];
    const d = new PgoutputDecoder(r);
    const fail = (msg: Buffer): OutboxdError => {
      try {
        decode(d, msg);
      } catch (err) {
        expect(err).toBeInstanceOf(OutboxdError);
        expect((err as OutboxdError).code).toBe('PG_PROTOCOL');
        return err as OutboxdError;
      }
      throw new Error('expected an error');
    };
    expect(fail(new Wire().u8(ch('I')).u32(3).u8(ch('N')).u16(1).text('v').build()).message).toMatch(/before its RELATION/);
    decode(d, relationMsg(3, 'public', 'outbox', [['id', 25]]));
    const insert = new Wire().u8(ch('I')).u32(3).u8(ch('N')).u16(1).text('value').build();
    // The 8 bytes after the message ('trailing') must not be taken for the value's last bytes.
    expect(fail(insert.subarray(0, insert.length - 2)).message).toMatch(/truncated/);
    expect(fail(new Wire().u8(ch('I')).u32(3).u8(ch('N')).u16(2).text('a').text('b').build()).message).toMatch(/has 2 columns/);
    expect(fail(new Wire().u8(ch('I')).u32(3).u8(ch('N')).u16(1).u8(ch('x')).build()).message).toMatch(/column kind 0x78/);
    expect(fail(new Wire().u8(ch('B')).u32(1).build()).message).toMatch(/truncated/);
    expect(fail(new Wire().u8(ch('Z')).build()).message).toMatch(/unknown message type 0x5a/);
    expect(r.calls.filter((c) => c[0] === 'insert')).toEqual([]);
  });
});
