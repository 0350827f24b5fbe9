import { PoisonError } from '../errors.js';
import type { OutboxMessage, TxnRef } from '../interfaces.js';
import type { TableConfig } from '../config/schema.js';
import { type Template, renderTemplate } from './template.js';

/**
 * Pure mapping from an outbox row, or a logical decoding message, to an OutboxMessage.
 * No I/O here. Everything that makes a row unpublishable throws a PoisonError naming the reason.
 */

/** Header names for the source position. Stable: consumers may trace or dedupe on them. */
export const LSN_HEADER = 'outboxd.lsn';
export const XID_HEADER = 'outboxd.xid';

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

/** A table as the stream described it (RELATION message), bound to its config. */
export interface TableBinding {
  readonly config: TableConfig;
  readonly payloadKind: PayloadKind;
}

/** Column values as pgoutput sends them, in text form (we install no type parsers). */
export type RowValues = Readonly<Record<string, string | null | undefined>>;

export class OutboxMapper {
  constructor(private readonly destination: Template) {}

  /** Maps one inserted outbox row. Throws PoisonError. */
  fromRow(binding: TableBinding, row: RowValues, txn: TxnRef): OutboxMessage {
    const cols = binding.config.columns;
    // Read each mapped column once; no per-row closures on this path.
    const fields: Fields = {
      id: row[cols.id] ?? null,
      aggregatetype: row[cols.aggregatetype] ?? null,
      aggregateid: row[cols.aggregateid] ?? null,
      type: row[cols.type] ?? null,
      correlation_id: row[cols.correlation_id] ?? null,
      causation_id: row[cols.causation_id] ?? null,
      reply_to: row[cols.reply_to] ?? null,
      traceparent: row[cols.traceparent] ?? null,
    };
    const payloadText = row[cols.payload] ?? null;
    if (payloadText === null) throw new PoisonError('missing_payload', `column ${cols.payload} (payload) is null`);
    const payload = binding.payloadKind === 'bytea' ? decodeByteaHex(payloadText) : payloadText;
    return this.build(
      fields,
      payload,
      CONTENT_TYPES[binding.payloadKind],
      parseHeadersColumn(row[cols.headers] ?? null, cols.headers),
      txn,
      row,
    );
  }

  /**
   * Maps the content of a transactional `pg_logical_emit_message`: a JSON object with the same
   * fields as a row. `payload` may be any JSON value (sent as its JSON text) or a string (sent
   * verbatim, for pre-serialised bodies).
   */
  fromLogicalMessage(content: Uint8Array, txn: TxnRef): OutboxMessage {
    let doc: unknown;
    try {
      doc = JSON.parse(Buffer.from(content.buffer, content.byteOffset, content.byteLength).toString('utf8'));
    } catch (err) {
      throw new PoisonError('bad_message', `logical message content is not JSON: ${(err as Error).message}`);
    }
    if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
      throw new PoisonError('bad_message', 'logical message content must be a JSON object');
    }
    const obj = doc as Record<string, unknown>;
    const fields: Fields = {
      id: scalarText(obj.id),
      aggregatetype: scalarText(obj.aggregatetype),
      aggregateid: scalarText(obj.aggregateid),
      type: scalarText(obj.type),
      correlation_id: scalarText(obj.correlation_id),
      causation_id: scalarText(obj.causation_id),
      reply_to: scalarText(obj.reply_to),
      traceparent: scalarText(obj.traceparent),
    };
    const raw = obj.payload;
    if (raw === undefined || raw === null) throw new PoisonError('missing_payload', 'logical message has no payload');
    const [payload, contentType] = typeof raw === 'string' ? [raw, CONTENT_TYPES.text] : [JSON.stringify(raw), CONTENT_TYPES.json];
    let headers: Record<string, string> | null = null;
    if (obj.headers !== undefined && obj.headers !== null) headers = headersFromObject(obj.headers, 'headers');
    return this.build(fields, payload, contentType, headers, txn, obj);
  }

  private build(
    f: Fields,
    payload: string | Buffer,
    contentType: string,
    extraHeaders: Record<string, string> | null,
    txn: TxnRef,
    raw: Readonly<Record<string, unknown>>,
  ): OutboxMessage {
    const id = f.id;
    if (id === null || id === '') throw new PoisonError('missing_id', 'id is null');
    const key = f.aggregateid;
    if (key === null) throw new PoisonError('null_key', `aggregateid (the shard key) is null for id ${id}`);
    const aggregateType = f.aggregatetype;
    if (aggregateType === null || aggregateType === '') {
      throw new PoisonError('missing_route', `aggregatetype is null for id ${id}`);
    }
    const type = f.type;
    // Template fields name outbox fields first (after column mapping), then raw columns.
    const destination = renderTemplate(this.destination, f as unknown as Record<string, string | null>, raw);
    const headers: Record<string, string> = extraHeaders ?? {};
    headers.id = id;
    if (type !== null) headers.type = type;
    const correlationId = f.correlation_id;
    if (correlationId !== null) headers.correlation_id = correlationId;
    if (f.causation_id !== null) headers.causation_id = f.causation_id;
    const replyTo = f.reply_to;
    if (replyTo !== null) headers.reply_to = replyTo;
    if (f.traceparent !== null) headers.traceparent = f.traceparent;
    // Formatted once per transaction, not per message.
    headers[LSN_HEADER] = txn.lsnText;
    headers[XID_HEADER] = txn.xidText;
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
      sizeBytes: payloadBytes + key.length + headerBytes + destination.length,
    };
  }
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

function scalarText(v: unknown): string | null {
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint') return String(v);
  return JSON.stringify(v);
}

/** The `headers` column: a JSON object whose values become header strings. */
function parseHeadersColumn(text: string | null, column: string): Record<string, string> | null {
  if (text === null || text === '') return null;
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new PoisonError('bad_headers', `column ${column} (headers) is not JSON`);
  }
  return headersFromObject(doc, column);
}

function headersFromObject(doc: unknown, what: string): Record<string, string> {
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) {
    throw new PoisonError('bad_headers', `${what} must be a JSON object`);
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(doc as Record<string, unknown>)) {
    const s = scalarText(v);
    if (s !== null) out[k] = s;
  }
  return out;
}

/** bytea's text output (`\x0a0b…`, the default `bytea_output = hex`) to bytes. */
export function decodeByteaHex(text: string): Buffer {
  if (!text.startsWith('\\x')) {
    throw new PoisonError('bad_message', 'bytea payload is not in hex format (set bytea_output = hex)');
  }
  return Buffer.from(text.slice(2), 'hex');
}
