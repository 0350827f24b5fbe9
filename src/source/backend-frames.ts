import { OutboxdError } from '../errors.js';
import { WITHHELD_CONTENT, WITHHELD_VALUE } from './pgoutput.js';

/**
 * The backend protocol as it arrives on the replication connection, framed message by message so
 * that a value too large to publish is never held whole (docs/adr/0015).
 *
 * pg's protocol parser holds each message whole before handing it on, in a buffer that grows by
 * doubling: one 128 MiB row cost the relay about 384 MiB, only for the decoder to find the value
 * too large to publish. Here every message goes on to pg as it came, in the very chunks the
 * socket read (nothing copied), except a CopyData message longer than STREAM_OVER_BYTES. That one
 * is read as it arrives and handed on once complete, in one buffer, rewritten: a column value or
 * a logical message's content over `maxValueBytes` is dropped as its bytes arrive, and in its place
 * stands a marker with its length (WITHHELD_VALUE, WITHHELD_CONTENT). The decoder reports it as
 * `oversized`, as it would have reported the value itself. Everything else stays as it was sent.
 */

/** A CopyData message longer than this is read as it arrives, not handed to pg to hold whole. */
export const STREAM_OVER_BYTES = 256 * 1024;

const HEADER_BYTES = 5; // Byte1 type, Int32 length (counting itself, not the type)
const COPY_DATA = 0x64; // 'd'
const XLOG_DATA = 0x77; // 'w': Int64 start, Int64 end, Int64 send time, then one pgoutput message

export class BackendFrames {
  /** Bytes of the message being passed on that are still to come (0: at a message boundary). */
  private passLeft = 0;
  /** The first bytes of a header that the last read ended in, held until the rest arrives. */
  private readonly head = Buffer.alloc(HEADER_BYTES);
  private headBytes = 0;
  /** The long CopyData message being read, if any. */
  private long: LongMessage | null = null;

  /**
   * `out` receives, synchronously and in order, what pg's parser is to read: the server's bytes,
   * long CopyData messages rewritten. (`streamOverBytes` is STREAM_OVER_BYTES but in tests.)
   */
  constructor(
    private readonly maxValueBytes: number,
    private readonly out: (bytes: Buffer) => void,
    private readonly streamOverBytes = STREAM_OVER_BYTES,
  ) {}

  /** The next bytes read from the server. Throws a PG_PROTOCOL error on a malformed message. */
  write(chunk: Buffer): void {
    const n = chunk.length;
    let i = 0;
    /** The bytes of `chunk` from here on are not handed on yet. */
    let from = 0;
    /** A header completed from the last read: it goes on in front of chunk[from..]. */
    let lead: Buffer | null = null;
    while (i < n) {
      if (this.long !== null) {
        i = this.long.feed(chunk, i);
        from = i;
        if (!this.long.done) break;
        this.out(this.long.message());
        this.long = null;
        continue;
      }
      if (this.passLeft > 0) {
        const step = Math.min(this.passLeft, n - i);
        this.passLeft -= step;
        i += step;
        continue;
      }
      // A message starts at i, or its header did in the last read (then i is 0).
      if (this.headBytes + n - i < HEADER_BYTES) {
        this.flush(lead, chunk, from, i);
        lead = null;
        chunk.copy(this.head, this.headBytes, i, n);
        this.headBytes += n - i;
        from = n;
        break;
      }
      const start = i;
      const split = this.headBytes > 0;
      let type: number;
      let length: number;
      if (split) {
        i += chunk.copy(this.head, this.headBytes, 0, HEADER_BYTES - this.headBytes);
        this.headBytes = 0;
        type = this.head[0] as number;
        length = this.head.readUInt32BE(1);
      } else {
        type = chunk[i] as number;
        length = chunk.readUInt32BE(i + 1);
        i += HEADER_BYTES;
      }
      if (length < 4) throw protocol(`message 0x${type.toString(16)} of length ${length}`);
      if (type === COPY_DATA && length - 4 > this.streamOverBytes) {
        // Its header goes on with the rewritten message, not now.
        this.flush(lead, chunk, from, start);
        lead = null;
        from = i;
        this.long = new LongMessage(length - 4, this.maxValueBytes);
      } else {
        if (split) {
          lead = Buffer.from(this.head);
          from = i;
        }
        this.passLeft = length - 4;
      }
    }
    this.flush(lead, chunk, from, n);
  }

  /**
   * Hands on chunk[from, to), after `lead` if there is one. A lead is joined to what follows it
   * (the copy pg's parser would otherwise make to join them), so that one read stays one chunk.
   */
  private flush(lead: Buffer | null, chunk: Buffer, from: number, to: number): void {
    if (lead !== null) this.out(to > from ? Buffer.concat([lead, chunk.subarray(from, to)]) : lead);
    else if (to > from) this.out(from === 0 && to === chunk.length ? chunk : chunk.subarray(from, to));
  }
}

/**
 * What the rewrite does with the next bytes of the message: `take` keeps them and hands them back
 * (the very bytes kept: changing them changes the message), `keep` and `drop` pass over them,
 * `string` keeps a NUL-terminated string (at most `max` bytes of it, and the NUL), `rest` keeps
 * everything to the end of the message.
 */
type Step =
  | { readonly op: 'take' | 'keep' | 'drop'; readonly bytes: number }
  | { readonly op: 'string'; readonly max: number }
  | { readonly op: 'rest' };

const take = (bytes: number): Step => ({ op: 'take', bytes });
const REST: Step = { op: 'rest' };
const EMPTY = Buffer.alloc(0);

/** One long CopyData message, read as it arrives. */
class LongMessage {
  /** Bytes of the message still to come. */
  private left: number;
  private readonly kept: Buffer[] = [];
  private keptBytes = 0;
  private readonly steps: Generator<Step, void, Buffer>;
  private step: Step = REST;
  /** What the current step still wants (take, keep, drop), or has kept of its string. */
  private want = 0;
  /** The buffer a `take` is filling. */
  private taking: Buffer = EMPTY;
  done = false;

  constructor(length: number, maxValueBytes: number) {
    this.left = length;
    this.steps = rewrite(maxValueBytes);
    this.next(EMPTY);
  }

  /** Reads what it needs of chunk[at..]; returns where it stopped (the end, or the message's end). */
  feed(chunk: Buffer, at: number): number {
    let i = at;
    while (!this.done && i < chunk.length) {
      const avail = Math.min(chunk.length - i, this.left);
      const step = this.step;
      if (step.op === 'string') {
        const end = i + avail;
        const nul = chunk.indexOf(0, i);
        const found = nul >= 0 && nul < end;
        const textEnd = found ? nul : end;
        // Past `max`, a string's bytes are dropped; its NUL always stays.
        this.keep(chunk, i, Math.min(Math.max(0, step.max - this.want), textEnd - i));
        this.want += textEnd - i;
        const used = (found ? nul + 1 : end) - i;
        this.left -= used;
        i += used;
        if (found) {
          this.keep(chunk, nul, 1);
          this.next(EMPTY);
        } else if (this.left === 0) throw truncated();
        continue;
      }
      const used = Math.min(avail, this.want);
      if (step.op === 'take') chunk.copy(this.taking, this.taking.length - this.want, i, i + used);
      else if (step.op === 'keep' || step.op === 'rest') this.keep(chunk, i, used);
      this.want -= used;
      this.left -= used;
      i += used;
      if (this.want > 0) continue;
      if (step.op === 'take') {
        this.kept.push(this.taking);
        this.keptBytes += this.taking.length;
      }
      this.next(this.taking);
    }
    return i;
  }

  /** The message as pg is to read it: header, then everything kept. */
  message(): Buffer {
    const header = Buffer.allocUnsafe(HEADER_BYTES);
    header[0] = COPY_DATA;
    header.writeUInt32BE(4 + this.keptBytes, 1);
    return Buffer.concat([header, ...this.kept], HEADER_BYTES + this.keptBytes);
  }

  /**
   * Keeps chunk[from, from + bytes). A small part of a large chunk is copied, so that what is
   * kept never holds on to much more than itself.
   */
  private keep(chunk: Buffer, from: number, bytes: number): void {
    if (bytes === 0) return;
    const part = chunk.subarray(from, from + bytes);
    this.kept.push(bytes * 4 < chunk.length ? Buffer.from(part) : part);
    this.keptBytes += bytes;
  }

  /** Moves to the rewrite's next step that wants bytes, handing it what the last one took. */
  private next(taken: Buffer): void {
    for (let last = taken; ; last = EMPTY) {
      const r = this.steps.next(last);
      const step = r.done ? REST : r.value;
      this.step = step;
      if (step.op === 'rest') {
        this.want = this.left;
        this.done = this.left === 0;
        return;
      }
      if (step.op === 'string') {
        this.want = 0;
        return;
      }
      if (step.bytes > this.left) throw truncated();
      this.want = step.bytes;
      if (step.op === 'take') this.taking = Buffer.allocUnsafe(step.bytes);
      if (step.bytes > 0) return;
    }
  }
}

/**
 * The steps of one CopyData message: XLogData, then an INSERT, UPDATE or DELETE whose tuples
 * have their long values withheld, or a logical message whose long content is withheld. Any
 * other message (BEGIN, COMMIT, RELATION, …: never long) is kept as it is.
 */
function* rewrite(maxValueBytes: number): Generator<Step, void, Buffer> {
  const xlog = yield take(25);
  if (xlog[0] !== XLOG_DATA) return;
  const type = (yield take(1))[0];
  if (type === 0x49 /* I */) {
    yield take(5); // Int32 relation, 'N'
    yield* tuple(maxValueBytes);
  } else if (type === 0x55 /* U */) {
    const marker = (yield take(5))[4]; // Int32 relation, then 'K' or 'O' (an old tuple), or 'N'
    if (marker !== 0x4e /* N */) {
      yield* tuple(maxValueBytes);
      yield take(1); // 'N'
    }
    yield* tuple(maxValueBytes);
  } else if (type === 0x44 /* D */) {
    yield take(5); // Int32 relation, 'K' or 'O'
    yield* tuple(maxValueBytes);
  } else if (type === 0x4d /* M */) {
    // Int8 flags, Int64 LSN, String prefix, Int32 length, content.
    const flags = yield take(9);
    // A prefix is a short name; one longer than any value could never match the configured one.
    yield { op: 'string', max: maxValueBytes };
    const length = (yield take(4)).readUInt32BE(0);
    if (length > maxValueBytes) {
      flags[0] = (flags[0] as number) | WITHHELD_CONTENT;
      yield { op: 'drop', bytes: length };
    } else yield { op: 'keep', bytes: length };
  }
}

/** TupleData: Int16 columns, then per column 'n', 'u', or 't' | 'b' with Int32 length and bytes. */
function* tuple(maxValueBytes: number): Generator<Step, void, Buffer> {
  const columns = (yield take(2)).readUInt16BE(0);
  for (let c = 0; c < columns; c++) {
    const kind = yield take(1);
    const k = kind[0] as number;
    if (k === 0x6e /* n */ || k === 0x75 /* u */) continue;
    if (k !== 0x74 /* t */ && k !== 0x62 /* b */) throw protocol(`unknown column kind 0x${k.toString(16)}`);
    const length = (yield take(4)).readUInt32BE(0);
    if (length > maxValueBytes) {
      kind[0] = WITHHELD_VALUE;
      yield { op: 'drop', bytes: length };
    } else yield { op: 'keep', bytes: length };
  }
}

function protocol(what: string): OutboxdError {
  return new OutboxdError('PG_PROTOCOL', `replication stream: ${what}`);
}

function truncated(): OutboxdError {
  return protocol('a CopyData message ends before its content (truncated)');
}
