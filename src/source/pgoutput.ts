import { isUtf8 } from 'node:buffer';
import { OutboxdError } from '../errors.js';
import { type Lsn, lsnFromWords } from '../lsn.js';
import { setOwn } from '../own.js';
import { utf8 } from './utf8.js';

/**
 * A decoder for pgoutput, the logical replication protocol, version 1 (what outboxd asks for):
 * https://www.postgresql.org/docs/current/protocol-logicalrep-message-formats.html
 *
 * It hands each message straight to a {@link PgoutputHandler}, in WAL order, synchronously, and
 * decodes only what the handler asked for: an outbox INSERT costs one small array and one string
 * per column the relay reads; the columns it does not read are skipped unread, and the changes
 * outboxd ignores (UPDATE, DELETE, TRUNCATE, other tables) are never decoded at all.
 * pg-logical-replication's own parser decodes every column of every change through
 * `TextDecoder` into a dictionary-mode object and formats every LSN as a string; on the bench's
 * reference backlog that was about a third of the relay's CPU (docs/adr/0007).
 *
 * The buffers it reads are views into the socket parser's buffer, valid only during the call:
 * nothing decoded from them may keep a reference (strings are copies; message content is copied).
 */

/** A table as a RELATION message describes it. */
export interface Relation {
  readonly relationOid: number;
  readonly schema: string;
  readonly name: string;
  readonly columns: ReadonlyArray<{ readonly name: string; readonly typeOid: number }>;
}

/**
 * One INSERT's column values by column index, as text (`null` for SQL NULL). Columns the handler
 * did not ask for are `undefined`. Valid only during the call: copy what you keep.
 */
export type ColumnValues = ReadonlyArray<string | null | undefined>;

/**
 * Why a row's values could not be decoded as they are: a column over the size limit (left
 * undecoded, so it costs no more memory than the message that carries it), or a text value that
 * is not UTF-8 (never replaced by U+FFFD).
 */
export interface RowProblem {
  readonly reason: 'oversized' | 'bad_encoding';
  readonly column: string;
  readonly bytes: number;
}

/** The row being handled, beyond the values asked for (valid only during the call). */
export interface WholeRow {
  /** Every column by name, as text (for a dead letter); a column with a problem is null. */
  wholeRow(): Record<string, string | null>;
  /** The first problem with the values asked for, or null. */
  problem(): RowProblem | null;
}

export type IgnoredKind = 'update' | 'delete' | 'truncate' | 'unconfigured_table' | 'foreign_message' | 'non_transactional_message';

/** What a handler keeps for a table whose inserts it wants: at least which columns to decode. */
export interface TableInterest {
  /** By column index: decode this column's value (the others are skipped unread). */
  readonly wanted: ReadonlyArray<boolean>;
}

/**
 * Receives decoded changes in WAL order. `insert` and `message` return a promise only when the
 * stream must stop reading until it settles (back-pressure). A method that throws stops the
 * stream: nothing after it is processed or confirmed.
 */
export interface PgoutputHandler<T extends TableInterest = TableInterest> {
  /**
   * The largest column value or logical message content worth decoding: one larger can never be
   * published (the sink's message limit), so it is reported as a problem instead of read.
   */
  readonly maxValueBytes: number;
  begin(xid: number, commitLsn: Lsn, commitTimeMs: number): void;
  /**
   * A table's shape, before its first change in a session and after it changes. Returns what the
   * handler keeps for the table, handed back with each of its inserts; or null to have its
   * inserts ignored unread.
   */
  relation(rel: Relation): T | null;
  insert(rel: Relation, table: T, values: ColumnValues, row: WholeRow): Promise<void> | undefined;
  /**
   * A logical decoding message. `content` is a copy the handler may keep, or null when its
   * `length` is over `maxValueBytes` (it was not copied).
   */
  message(prefix: string, content: Buffer | null, length: number, transactional: boolean, lsn: Lsn): Promise<void> | undefined;
  ignore(kind: IgnoredKind): void;
  commit(endLsn: Lsn): void;
}

/**
 * Not pgoutput: written by the replication socket (backend-frames.ts) in place of a value it did
 * not keep, being over `maxValueBytes`. A column kind followed by Int32 the value's length, and
 * no bytes; and a logical message flag: the content's length is there, the content is not.
 */
export const WITHHELD_VALUE = 0x3f; // '?'
export const WITHHELD_CONTENT = 0x80;

/** The replication protocol's epoch, 2000-01-01, in Unix milliseconds. */
export const PG_EPOCH_MS = 946_684_800_000;

interface KnownRelation<T> {
  readonly rel: Relation;
  readonly table: T | null;
}

export class PgoutputDecoder<T extends TableInterest = TableInterest> implements WholeRow {
  private readonly relations = new Map<number, KnownRelation<T>>();
  private buf: Buffer = Buffer.alloc(0);
  private pos = 0;
  private end = 0;
  /** Where the tuple of the INSERT being handled starts, for wholeRow(). */
  private tupleAt = -1;
  private tupleRel: Relation | null = null;
  private rowProblem: RowProblem | null = null;

  /** One decoder per replication session: a new session re-sends its RELATION messages. */
  constructor(private readonly handler: PgoutputHandler<T>) {}

  /**
   * Decodes one pgoutput message, `buf[start, end)`, and hands it to the handler. Returns what
   * the handler returned for a change that needs back-pressure.
   */
  decode(buf: Buffer, start: number, end: number): Promise<void> | undefined {
    this.buf = buf;
    this.pos = start + 1;
    this.end = end;
    if (start >= end) throw protocol('empty message');
    switch (buf[start]) {
      case 0x49 /* I */:
        return this.insert();
      case 0x42 /* B */:
        {
          const commitLsn = this.lsn();
          const commitTimeMs = this.timestampMs();
          this.handler.begin(this.uint32(), commitLsn, commitTimeMs);
          return undefined;
        }
      case 0x43 /* C */:
        {
          this.need(25);
          this.pos += 9; // flags, commit LSN (the same as BEGIN's)
          this.handler.commit(this.lsn());
          return undefined;
        }
      case 0x52 /* R */:
        this.relation();
        return undefined;
      case 0x4d /* M */:
        return this.message();
      case 0x55 /* U */:
        this.handler.ignore('update');
        return undefined;
      case 0x44 /* D */:
        this.handler.ignore('delete');
        return undefined;
      case 0x54 /* T */:
        this.handler.ignore('truncate');
        return undefined;
      case 0x4f /* O: origin */:
      case 0x59 /* Y: type */:
        return undefined;
      default:
        throw protocol(`unknown message type 0x${(buf[start] as number).toString(16)}`);
    }
  }

  wholeRow(): Record<string, string | null> {
    const rel = this.tupleRel;
    if (rel === null || this.tupleAt < 0) throw new OutboxdError('INTERNAL', 'wholeRow() called outside an insert');
    this.pos = this.tupleAt;
    const problem = this.rowProblem;
    const values = this.tuple(rel, null);
    this.rowProblem = problem;
    const row: Record<string, string | null> = {};
    rel.columns.forEach((c, i) => {
      setOwn(row, c.name, values[i] ?? null);
    });
    return row;
  }

  problem(): RowProblem | null {
    return this.rowProblem;
  }

  private insert(): Promise<void> | undefined {
    const oid = this.uint32();
    const known = this.relations.get(oid);
    if (known === undefined) throw protocol(`INSERT for relation ${oid} before its RELATION message`);
    const table = known.table;
    if (table === null) {
      this.handler.ignore('unconfigured_table');
      return undefined;
    }
    this.need(1);
    if (this.buf[this.pos++] !== 0x4e /* N */) throw protocol('INSERT without a new tuple');
    this.tupleAt = this.pos;
    this.tupleRel = known.rel;
    this.rowProblem = null;
    try {
      return this.handler.insert(known.rel, table, this.tuple(known.rel, table.wanted), this);
    } finally {
      this.tupleAt = -1;
      this.tupleRel = null;
      this.rowProblem = null;
    }
  }

  /**
   * TupleData: Int16 count, then per column 'n' | 'u' | 't' Int32 len, bytes (| 'b' in v2+), or
   * WITHHELD_VALUE Int32 len (the socket dropped the bytes: over `maxValueBytes`).
   * A value is checked before it is decoded: over `maxValueBytes` it stays undecoded; bytes that
   * are not UTF-8 are never decoded into replacement characters. Either is recorded as the row's
   * problem and the value left undefined.
   */
  private tuple(rel: Relation, wanted: ReadonlyArray<boolean> | null): Array<string | null | undefined> {
    const buf = this.buf;
    const n = this.uint16();
    if (n !== rel.columns.length)
      throw protocol(`tuple of ${rel.schema}.${rel.name} has ${n} columns, RELATION said ${rel.columns.length}`);
    const values = new Array<string | null | undefined>(n);
    let p = this.pos;
    const end = this.end;
    for (let i = 0; i < n; i++) {
      if (p >= end) throw truncated();
      const kind = buf[p++];
      if (kind === 0x74 /* t */ || kind === 0x62 /* b */) {
        if (p + 4 > end) throw truncated();
        const len = buf.readUInt32BE(p);
        p += 4;
        if (p + len > end) throw truncated();
        if (wanted === null || wanted[i] === true) {
          if (len > this.handler.maxValueBytes) {
            this.problemAt(rel, i, 'oversized', len);
          } else {
            const text = utf8(buf, p, p + len);
            // U+FFFD is legal text; only then are the bytes checked, so valid rows pay one scan.
            if (text.includes('\uFFFD') && !isUtf8(buf.subarray(p, p + len))) this.problemAt(rel, i, 'bad_encoding', len);
            else values[i] = text;
          }
        }
        p += len;
      } else if (kind === 0x6e /* n */) {
        values[i] = null;
      } else if (kind === 0x75 /* u: unchanged TOAST, never in an INSERT */) {
        values[i] = undefined;
      } else if (kind === WITHHELD_VALUE) {
        if (p + 4 > end) throw truncated();
        if (wanted === null || wanted[i] === true) this.problemAt(rel, i, 'oversized', buf.readUInt32BE(p));
        p += 4;
      } else {
        throw protocol(`unknown column kind 0x${(kind as number).toString(16)}`);
      }
    }
    this.pos = p;
    return values;
  }

  private problemAt(rel: Relation, column: number, reason: RowProblem['reason'], bytes: number): void {
    this.rowProblem ??= { reason, column: rel.columns[column]?.name ?? String(column), bytes };
  }

  private relation(): void {
    const relationOid = this.uint32();
    const schema = this.string();
    const name = this.string();
    this.need(3);
    this.pos++; // replica identity setting
    const n = this.uint16();
    const columns: Array<{ name: string; typeOid: number }> = [];
    for (let i = 0; i < n; i++) {
      this.need(1);
      this.pos++; // flags (part of the key)
      const colName = this.string();
      const typeOid = this.uint32();
      this.uint32(); // type modifier
      columns.push({ name: colName, typeOid });
    }
    // pgoutput sends an empty namespace for pg_catalog.
    const rel: Relation = { relationOid, schema: schema === '' ? 'pg_catalog' : schema, name, columns };
    this.relations.set(relationOid, { rel, table: this.handler.relation(rel) });
  }

  /** Int8 flags, Int64 LSN, String prefix, Int32 length, bytes (protocol v1: no xid). */
  private message(): Promise<void> | undefined {
    this.need(1);
    const flags = this.buf[this.pos++] as number;
    const lsn = this.lsn();
    const prefix = this.string();
    const len = this.uint32();
    if (flags & WITHHELD_CONTENT) return this.handler.message(prefix, null, len, (flags & 1) === 1, lsn);
    this.need(len);
    // A copy: the handler may keep it (a dead letter), and the socket buffer is reused.
    const content = len > this.handler.maxValueBytes ? null : Buffer.from(this.buf.subarray(this.pos, this.pos + len));
    this.pos += len;
    return this.handler.message(prefix, content, len, (flags & 1) === 1, lsn);
  }

  private need(n: number): void {
    if (this.pos + n > this.end) throw truncated();
  }

  private uint16(): number {
    this.need(2);
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  private uint32(): number {
    this.need(4);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  private lsn(): Lsn {
    this.need(8);
    const v = lsnFromWords(this.buf.readUInt32BE(this.pos), this.buf.readUInt32BE(this.pos + 4));
    this.pos += 8;
    return v;
  }

  /** Int64 microseconds since 2000-01-01, as Unix milliseconds. */
  private timestampMs(): number {
    this.need(8);
    const us = this.buf.readInt32BE(this.pos) * 4_294_967_296 + this.buf.readUInt32BE(this.pos + 4);
    this.pos += 8;
    return Math.floor(us / 1000) + PG_EPOCH_MS;
  }

  private string(): string {
    const nul = this.buf.indexOf(0, this.pos);
    if (nul < 0 || nul >= this.end) throw truncated();
    const s = this.buf.toString('utf8', this.pos, nul);
    this.pos = nul + 1;
    return s;
  }
}

function protocol(what: string): OutboxdError {
  return new OutboxdError('PG_PROTOCOL', `pgoutput: ${what}`);
}

function truncated(): OutboxdError {
  return protocol('message ends early (truncated)');
}
