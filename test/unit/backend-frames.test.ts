import { describe, expect, it } from 'vitest';
import { OutboxdError } from '../../src/errors.js';
import { BackendFrames, STREAM_OVER_BYTES } from '../../src/source/backend-frames.js';
import { WITHHELD_CONTENT, WITHHELD_VALUE } from '../../src/source/pgoutput.js';
import { Wire, backend, ch, xlogData } from './pgoutput-wire.js';

/** Small bounds, so that every way of splitting the stream can be tried. */
const MAX_VALUE = 16;
const STREAM_OVER = 64;

type Value = string | null | { withheld: number };

/** TupleData as the server sends it, or (`{ withheld }`) as the socket rewrites it. */
function tuple(w: Wire, values: Value[]): Wire {
  w.u16(values.length);
  for (const v of values) {
    if (v === null) w.u8(ch('n'));
    else if (typeof v === 'string') w.text(v);
    else w.u8(WITHHELD_VALUE).u32(v.withheld);
  }
  return w;
}

const insert = (values: Value[]) => xlogData(tuple(new Wire().u8(ch('I')).u32(16_385).u8(ch('N')), values).build());
const logical = (flags: number, prefix: string, length: number, content: string | null) =>
  xlogData(
    new Wire()
      .u8(ch('M'))
      .u8(flags)
      .u64(0x5000n)
      .str(prefix)
      .u32(length)
      .bytes(Buffer.from(content ?? ''))
      .build(),
  );
const keepalive = () => backend('d', new Wire().u8(ch('k')).u64(0x10n).u64(0x20n).u8(1).build());

const a = (n: number, c = 'a') => c.repeat(n);

/** What the server sends, and what pg must read: long messages with their long values withheld. */
const cases: Array<{ name: string; sent: Buffer; read: Buffer }> = [
  { name: 'AuthenticationOk', sent: backend('R', Buffer.from([0, 0, 0, 0])), read: backend('R', Buffer.from([0, 0, 0, 0])) },
  { name: 'ReadyForQuery', sent: backend('Z', Buffer.from('I')), read: backend('Z', Buffer.from('I')) },
  { name: 'a keepalive', sent: keepalive(), read: keepalive() },
  // Short: passed on whole, even with a value over the limit (the decoder reports it from there).
  { name: 'a short insert', sent: insert(['i-1', a(17)]), read: insert(['i-1', a(17)]) },
  {
    name: 'a long insert with long values',
    sent: insert(['i-2', a(100, 'x'), null, a(10, 'y'), a(17, 'z'), '']),
    read: insert(['i-2', { withheld: 100 }, null, a(10, 'y'), { withheld: 17 }, '']),
  },
  {
    name: 'a long insert of short values',
    sent: insert(Array.from({ length: 6 }, (_, i) => a(16, String(i)))),
    read: insert(Array.from({ length: 6 }, (_, i) => a(16, String(i)))),
  },
  {
    name: 'a long update with an old tuple',
    sent: xlogData(tuple(tuple(new Wire().u8(ch('U')).u32(7).u8(ch('O')), [a(40, 'o')]).u8(ch('N')), [a(40, 'n'), 'c']).build()),
    read: xlogData(
      tuple(tuple(new Wire().u8(ch('U')).u32(7).u8(ch('O')), [{ withheld: 40 }]).u8(ch('N')), [{ withheld: 40 }, 'c']).build(),
    ),
  },
  {
    name: 'a long update without one',
    sent: xlogData(tuple(new Wire().u8(ch('U')).u32(7).u8(ch('N')), [a(70, 'n')]).build()),
    read: xlogData(tuple(new Wire().u8(ch('U')).u32(7).u8(ch('N')), [{ withheld: 70 }]).build()),
  },
  {
    name: 'a long delete',
    sent: xlogData(tuple(new Wire().u8(ch('D')).u32(7).u8(ch('K')), [a(50, 'k')]).build()),
    read: xlogData(tuple(new Wire().u8(ch('D')).u32(7).u8(ch('K')), [{ withheld: 50 }]).build()),
  },
  {
    name: 'a long logical message',
    sent: logical(1, 'outbox', 100, a(100, 'm')),
    read: logical(1 | WITHHELD_CONTENT, 'outbox', 100, null),
  },
  // A prefix longer than any value could match no configured prefix: it is cut, the content kept.
  { name: 'a long logical message prefix', sent: logical(1, a(80, 'p'), 3, 'abc'), read: logical(1, a(MAX_VALUE, 'p'), 3, 'abc') },
  {
    name: 'a long RELATION',
    sent: xlogData(new Wire().u8(ch('R')).u32(1).str(a(90, 's')).bytes(Buffer.alloc(8)).build()),
    read: xlogData(new Wire().u8(ch('R')).u32(1).str(a(90, 's')).bytes(Buffer.alloc(8)).build()),
  },
  {
    name: 'a long CopyData that is not XLogData',
    sent: backend('d', Buffer.alloc(100, 0x6b)),
    read: backend('d', Buffer.alloc(100, 0x6b)),
  },
  {
    name: 'CommandComplete',
    sent: backend('C', Buffer.from('START_REPLICATION\0')),
    read: backend('C', Buffer.from('START_REPLICATION\0')),
  },
];
const SENT = Buffer.concat(cases.map((c) => c.sent));
const READ = Buffer.concat(cases.map((c) => c.read));

/** Runs `reads` through a framer; returns what it handed on, chunk by chunk. */
function frame(reads: Buffer[], maxValue = MAX_VALUE, streamOver = STREAM_OVER): Buffer[] {
  const out: Buffer[] = [];
  const frames = new BackendFrames(maxValue, (b) => out.push(b), streamOver);
  for (const r of reads) frames.write(r);
  return out;
}

describe('BackendFrames', () => {
  it('hands on short messages in the very buffer the socket read (no copy)', () => {
    const read = Buffer.concat([cases[0]?.sent, cases[2]?.sent, cases[3]?.sent] as Buffer[]);
    const out = frame([read]);
    expect(out).toHaveLength(1);
    expect(out[0]).toBe(read);
  });

  it('rewrites a long message with each value over the limit withheld (its length kept), the rest as sent', () => {
    for (const c of cases) expect(Buffer.concat(frame([c.sent])), c.name).toEqual(c.read);
    expect(cases.filter((c) => !c.sent.equals(c.read)).map((c) => c.name)).toHaveLength(6);
  });

  it('hands on the same bytes however the reads split the stream: at every byte boundary, and byte by byte', () => {
    for (let k = 0; k <= SENT.length; k++) {
      const got = Buffer.concat(frame([SENT.subarray(0, k), SENT.subarray(k)]));
      if (!got.equals(READ)) expect.fail(`split at byte ${k}: ${got.toString('hex')} != ${READ.toString('hex')}`);
    }
    const bytes = Array.from({ length: SENT.length }, (_, i) => SENT.subarray(i, i + 1));
    expect(Buffer.concat(frame(bytes))).toEqual(READ);
  });

  it('keeps one read one chunk when a header was split between reads', () => {
    const two = Buffer.concat([keepalive(), keepalive()]);
    const out = frame([two.subarray(0, 2), two.subarray(2)]);
    expect(out.map((b) => b.length)).toEqual([two.length]);
  });

  it('reads past a 128 MiB value without holding it, and hands on the message without it', () => {
    const huge = 128 * 1024 * 1024;
    const head = xlogData(new Wire().u8(ch('I')).u32(9).u8(ch('N')).u16(2).text('id-1').u8(ch('t')).u32(huge).build());
    // The CopyData length counts the value the server is about to send.
    head.writeUInt32BE(head.length - 1 + huge, 1);
    const out: Buffer[] = [];
    const frames = new BackendFrames(1024 * 1024, (b) => out.push(b));
    frames.write(head);
    const block = Buffer.alloc(64 * 1024, 0x78);
    for (let sent = 0; sent < huge; sent += block.length) frames.write(block);
    frames.write(keepalive());
    const rewritten = xlogData(new Wire().u8(ch('I')).u32(9).u8(ch('N')).u16(2).text('id-1').u8(WITHHELD_VALUE).u32(huge).build());
    expect(out).toEqual([rewritten, keepalive()]);
    expect(huge).toBeGreaterThan(STREAM_OVER_BYTES);
  });

  it('fails with a PG_PROTOCOL error on a malformed long message', () => {
    const fails = (sent: Buffer, message: RegExp) => {
      try {
        frame([sent]);
      } catch (err) {
        expect(err).toBeInstanceOf(OutboxdError);
        expect((err as OutboxdError).code).toBe('PG_PROTOCOL');
        expect((err as Error).message).toMatch(message);
        return;
      }
      expect.fail('expected an error');
    };
    const overrun = insert(['i', a(100)]);
    overrun.writeUInt32BE(101, overrun.length - 104); // the value claims one byte more than is left
    fails(overrun, /truncated/);
    fails(xlogData(new Wire().u8(ch('I')).u32(1).u8(ch('N')).u16(1).u8(0x21).bytes(Buffer.alloc(80)).build()), /column kind 0x21/);
    fails(backend('d', Buffer.alloc(0)).fill(0, 1, 5), /length 0/);
  });
});
