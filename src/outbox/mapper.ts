import { isUtf8 } from 'node:buffer';
import { ConfigError, PoisonError } from '../errors.js';
import type { OutboxMessage, TxnRef } from '../interfaces.js';
import { setOwn } from '../own.js';
import type { TableConfig } from '../config/config.js';
import { COLUMN_FIELDS, REQUIRED_COLUMN_FIELDS } from '../config/schema.js';
import type { Template } from '../config/template.js';
import type { Relation } from '../source/pgoutput.js';
import type { CloudEventsEncoder } from './cloudevents.js';
import { type JsonSpan, JsonSyntaxError, scanObject } from './json.js';
import { headersFromSpan, parseHeadersColumn, scalarField, stringValue } from './members.js';
import { LSN_HEADER, REPLAY_HEADER, XID_HEADER } from './position-headers.js';
import { renderTemplate } from './template.js';

/**
 * Pure mapping from an outbox row, or a logical decoding message, to an OutboxMessage.
 * No I/O here. Everything that makes a row unpublishable throws a PoisonError naming the reason.
 */

/** How a payload column's text becomes body bytes, decided once per relation from its type. */
export type PayloadKind = 'json' | 'text' | 'bytea';

const TYPE_OIDS = { bytea: 17, json: 114, jsonb: 3802 } as const;

export function payloadKindOf(typeOid: number): PayloadKind {
  if (typeOid === TYPE_OIDS.jsonb || typeOid === TYPE_OIDS.json) return 'json';
  if (typeOid === TYPE_OIDS.bytea) return 'bytea';
  return 'text';
}

const CONTENT_TYPES: Record<PayloadKind, string> = {
  json: 'application/json',
  text: 'text/plain; charset=utf-8',
  bytea: 'application/octet-stream',
};

type RowField = (typeof COLUMN_FIELDS)[number];

/** The fields a destination template finds before it looks at raw columns: all but the body. */
const TEMPLATE_FIELDS: ReadonlySet<string> = new Set(COLUMN_FIELDS.filter((f) => f !== 'payload' && f !== 'headers'));

/** A column as a RELATION message describes it. */
export type ColumnInfo = Relation['columns'][number];

/**
 * A table as the stream described it (RELATION message), bound to its config once, so that
 * mapping a row reads values by column index and decodes only the columns it needs.
 */
export interface TableBinding {
  readonly config: TableConfig;
  readonly payloadKind: PayloadKind;
  readonly columns: readonly ColumnInfo[];
  /**
   * Each outbox field's column index. A field the table has no column for gets the column count:
   * reading past the end yields undefined (null), without a branch per field.
   */
  readonly at: Readonly<Record<RowField, number>>;
  /** Template fields that are not outbox fields, read from raw columns: [name, index]. */
  readonly rawFields: ReadonlyArray<readonly [string, number]>;
  /** Which columns the decoder must decode; the others are skipped unread. */
  readonly wanted: readonly boolean[];
}

/** Column values as pgoutput sends them, in text form, by column index (undefined: not decoded). */
export type RowValues = ReadonlyArray<string | null | undefined>;

export class OutboxMapper {
  /**
   * One string per distinct destination: each message's rendered destination is a new string,
   * whose hash every Set and Map on the way (metric labels, topic checks, partition metadata)
   * would compute again; the interned one carries its hash. Bounded (INTERN_MAX).
   */
  private readonly interned = new Map<string, string>();
  /** The fields the templates read: the destination's, and CloudEvents' source's. */
  private readonly templateFields: readonly string[];
  /**
   * The one outbox field the destination reads (the default's `{aggregatetype}`), or null. Rows
   * with the value of the last row's get its destination, not a new string to render and hash.
   */
  private readonly soleField: keyof Fields | null;
  private last: { value: string | null; destination: string } = { value: null, destination: '' };

  /**
   * `cloudEvents`: null when sink.cloudevents.mode is off, and then the mapping pays nothing for it.
   * `replayRun`: a replay's run id, or null for the relay. A replayed row is read from its table,
   * not from the WAL, so no source position is known: its message carries `outboxd-replay: <run
   * id>` in place of the position headers.
   */
  constructor(
    private readonly destination: Template,
    private readonly cloudEvents: CloudEventsEncoder | null = null,
    private readonly replayRun: string | null = null,
  ) {
    this.templateFields = [...new Set([...destination.fields, ...(cloudEvents?.fields ?? [])])];
    const only = destination.fields.length === 1 ? (destination.fields[0] as string) : null;
    this.soleField = only !== null && TEMPLATE_FIELDS.has(only) ? (only as keyof Fields) : null;
  }

  private intern(d: string): string {
    const known = this.interned.get(d);
    if (known !== undefined) return known;
    if (this.interned.size < INTERN_MAX) this.interned.set(d, d);
    return d;
  }

  /** Binds a table's columns (from its RELATION message) to its config and this mapper's template. */
  bind(config: TableConfig, columns: readonly ColumnInfo[]): TableBinding {
    const index = new Map(columns.map((c, i) => [c.name, i]));
    const wanted = columns.map(() => false);
    const at = {} as Record<RowField, number>;
    for (const field of COLUMN_FIELDS) {
      const i = index.get(config.columns[field]) ?? columns.length;
      at[field] = i;
      if (i < columns.length) wanted[i] = true;
    }
    const rawFields: Array<readonly [string, number]> = [];
    for (const f of this.templateFields) {
      const i = index.get(f);
      if (TEMPLATE_FIELDS.has(f) || i === undefined) continue;
      rawFields.push([f, i]);
      wanted[i] = true;
    }
    const payloadType = columns[at.payload]?.typeOid ?? 0;
    return { config, payloadKind: payloadKindOf(payloadType), columns, at, rawFields, wanted };
  }

  /** Maps one inserted outbox row. Throws PoisonError. */
  fromRow(binding: TableBinding, values: RowValues, txn: TxnRef, index = 0): OutboxMessage {
    const at = binding.at;
    // Read each mapped column once; no per-row closures on this path.
    const fields: Fields = {
      id: values[at.id] ?? null,
      aggregatetype: values[at.aggregatetype] ?? null,
      aggregateid: values[at.aggregateid] ?? null,
      type: values[at.type] ?? null,
      correlation_id: values[at.correlation_id] ?? null,
      causation_id: values[at.causation_id] ?? null,
      reply_to: values[at.reply_to] ?? null,
      traceparent: values[at.traceparent] ?? null,
    };
    const payloadText = values[at.payload] ?? null;
    if (payloadText === null) throw new PoisonError('missing_payload', `column ${binding.config.columns.payload} (payload) is null`);
    const payload = binding.payloadKind === 'bytea' ? decodeByteaHex(payloadText) : payloadText;
    let raw: Record<string, string | null> | null = null;
    if (binding.rawFields.length > 0) {
      raw = {};
      for (const [name, i] of binding.rawFields) setOwn(raw, name, values[i] ?? null);
    }
    return this.build(
      fields,
      payload,
      CONTENT_TYPES[binding.payloadKind],
      parseHeadersColumn(values[at.headers] ?? null, binding.config.columns.headers),
      txn,
      raw,
      index,
    );
  }

  /**
   * Maps the content of a transactional `pg_logical_emit_message`: a JSON object with the same
   * fields as a row. `payload` may be any JSON value (sent as its exact JSON text) or a string
   * (sent as its value, for pre-serialised bodies). Ids, keys and header values are taken as
   * written: a number keeps every digit. Nothing is parsed into JavaScript values and written
   * back (src/outbox/json.ts).
   */
  fromLogicalMessage(content: Buffer, txn: TxnRef, index = 0): OutboxMessage {
    if (!isUtf8(content)) throw new PoisonError('bad_encoding', 'logical message content is not valid UTF-8');
    const text = content.toString('utf8');
    let members: Map<string, JsonSpan>;
    try {
      members = scanObject(text);
    } catch (err) {
      if (err instanceof JsonSyntaxError)
        throw new PoisonError('bad_message', `logical message content is not a JSON object: ${err.message}`);
      throw err;
    }
    const field = (name: string) => scalarField(text, members, name, 'logical message field');
    const fields: Fields = {
      id: field('id'),
      aggregatetype: field('aggregatetype'),
      aggregateid: field('aggregateid'),
      type: field('type'),
      correlation_id: field('correlation_id'),
      causation_id: field('causation_id'),
      reply_to: field('reply_to'),
      traceparent: field('traceparent'),
    };
    const p = members.get('payload');
    if (p === undefined || p.kind === 'null') throw new PoisonError('missing_payload', 'logical message has no payload');
    const [payload, contentType] =
      p.kind === 'string' ? [stringValue(text, p, 'payload'), CONTENT_TYPES.text] : [text.slice(p.start, p.end), CONTENT_TYPES.json];
    const h = members.get('headers');
    const headers = h === undefined || h.kind === 'null' ? null : headersFromSpan(text, h, 'logical message field headers');
    let raw: Record<string, string | null> | null = null;
    for (const f of this.templateFields) {
      if (TEMPLATE_FIELDS.has(f) || !members.has(f)) continue;
      raw ??= {};
      setOwn(raw, f, field(f));
    }
    return this.build(fields, payload, contentType, headers, txn, raw, index);
  }

  /**
   * sink.cloudevents: the event's attributes into `headers` (binary) or the envelope as the body
   * (structured). Kept out of build() so that, off, the mapping's hot function stays small.
   */
  private asCloudEvent(
    encoder: CloudEventsEncoder,
    f: Fields,
    id: string,
    type: string | null,
    key: string,
    txn: TxnRef,
    payload: string | Buffer,
    contentType: string,
    raw: Readonly<Record<string, string | null>> | null,
    headers: Record<string, string>,
  ): { payload: string | Buffer; contentType: string } {
    try {
      return encoder.encode(
        { id, type, key, txn, payload, contentType, fields: f as unknown as Record<string, string | null>, raw },
        headers,
      );
    } catch (err) {
      throw err instanceof PoisonError ? subject(err, f) : err;
    }
  }

  /** Builds the message, or throws a PoisonError that carries the id and key it could read. */
  private build(
    f: Fields,
    payload: string | Buffer,
    contentType: string,
    extraHeaders: Record<string, string> | null,
    txn: TxnRef,
    raw: Readonly<Record<string, string | null>> | null,
    index: number,
  ): OutboxMessage {
    const id = f.id;
    if (id === null || id === '') throw subject(new PoisonError('missing_id', `id is ${id === null ? 'null' : 'empty'}`), f);
    const key = f.aggregateid;
    if (key === null) throw subject(new PoisonError('null_key', `aggregateid (the shard key) is null for id ${id}`), f);
    const aggregateType = f.aggregatetype;
    if (aggregateType === null || aggregateType === '') {
      throw subject(new PoisonError('missing_route', `aggregatetype is null for id ${id}`), f);
    }
    const type = f.type;
    // Template fields name outbox fields first (after column mapping), then raw columns.
    let destination: string;
    const sole = this.soleField === null ? null : f[this.soleField];
    if (sole !== null && sole === this.last.value) destination = this.last.destination;
    else {
      try {
        destination = this.intern(renderTemplate(this.destination, f as unknown as Record<string, string | null>, raw));
      } catch (err) {
        throw err instanceof PoisonError ? subject(err, f) : err;
      }
      if (this.soleField !== null) this.last = { value: sole, destination };
    }
    const headers: Record<string, string> = extraHeaders ?? {};
    headers.id = id;
    if (type !== null) headers.type = type;
    const correlationId = f.correlation_id;
    if (correlationId !== null) headers.correlation_id = correlationId;
    if (f.causation_id !== null) headers.causation_id = f.causation_id;
    const replyTo = f.reply_to;
    if (replyTo !== null) headers.reply_to = replyTo;
    if (f.traceparent !== null) headers.traceparent = f.traceparent;
    if (this.replayRun === null) {
      // Formatted once per transaction, not per message.
      headers[LSN_HEADER] = txn.lsnText;
      headers[XID_HEADER] = txn.xidText;
    } else headers[REPLAY_HEADER] = this.replayRun;
    if (this.cloudEvents !== null)
      ({ payload, contentType } = this.asCloudEvent(this.cloudEvents, f, id, type, key, txn, payload, contentType, raw, headers));
    let headerBytes = 0;
    for (const k in headers) headerBytes += k.length + (headers[k] as string).length;
    const payloadBytes = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length;
    return {
      id,
      destination,
      key,
      aggregateType,
      type,
      payload,
      contentType,
      headers,
      correlationId,
      replyTo,
      txn,
      index,
      sizeBytes: payloadBytes + key.length + headerBytes + destination.length,
    };
  }
}

const INTERN_MAX = 10_000;

/**
 * Refuses a binding whose table lacks a column for a required outbox field (REQUIRED_COLUMN_FIELDS),
 * with the ConfigError naming the field's YAML path. `tableIndex` is the table's place in
 * outbox.tables; `tableName` is schema.table.
 */
export function requireColumns(binding: TableBinding, tableIndex: number, tableName: string): void {
  const { at, columns, config } = binding;
  for (const field of REQUIRED_COLUMN_FIELDS) {
    // bind() gives a field the table has no column for the column count (see TableBinding.at).
    if (at[field] === columns.length) {
      throw new ConfigError(
        `outbox.tables[${tableIndex}].columns.${field}`,
        `table ${tableName} has no column "${config.columns[field]}" (columns: ${columns.map((c) => c.name).join(', ')})`,
      );
    }
  }
}

/** Records on a poison error the id and key that could be read, for its dead letter. */
function subject(err: PoisonError, f: Fields): PoisonError {
  err.subject ??= { id: f.id, key: f.aggregateid };
  return err;
}

/** The outbox fields a message is built from, after column mapping. */
interface Fields {
  id: string | null;
  aggregatetype: string | null;
  aggregateid: string | null;
  type: string | null;
  correlation_id: string | null;
  causation_id: string | null;
  reply_to: string | null;
  traceparent: string | null;
}

/** bytea's text output (`\x0a0b…`, the default `bytea_output = hex`) to bytes, every one of them. */
export function decodeByteaHex(text: string): Buffer {
  if (!text.startsWith('\\x')) {
    throw new PoisonError('bad_message', 'bytea payload is not in hex format (set bytea_output = hex)');
  }
  const bytes = Buffer.from(text.slice(2), 'hex');
  // Buffer.from stops quietly at the first character that is not hex.
  if (bytes.length * 2 !== text.length - 2) throw new PoisonError('bad_message', 'bytea payload is not valid hex');
  return bytes;
}
