import type { SinkConfig } from '../config/config.js';
import type { Template } from '../config/template.js';
import { PoisonError } from '../errors.js';
import type { TxnRef } from '../interfaces.js';
import { type TemplateUse, renderTemplate } from './template.js';

/**
 * CloudEvents 1.0 (`sink.cloudevents`): the outbox event as a CloudEvent, in binary or structured
 * content mode, for the sink's protocol binding. Pure, no I/O; the mapper calls it once per
 * message when the mode is not `off` (and not at all when it is).
 *
 * Mapping: `id` ← the outbox id, `source` ← the source template, `type` ← the type column,
 * `subject` ← aggregateid (left out when empty), `time` ← the transaction's commit time,
 * `datacontenttype` ← the payload's content type, `specversion` 1.0. Nothing else becomes an
 * attribute: correlation and other headers stay plain headers.
 *
 * Bindings (cloudevents/spec 1.0.2):
 * - Kafka (kafka-protocol-binding.md, also the stdout sink's): binary puts each attribute in a
 *   `ce_<name>` header and `datacontenttype` in the `content-type` header; structured sends the
 *   JSON envelope with `content-type: application/cloudevents+json; charset=utf-8`.
 * - AMQP (amqp-protocol-binding.md): binary puts each attribute in a `cloudEvents:<name>`
 *   application property (RabbitMQ: a header) as its canonical string, and `datacontenttype` in
 *   the AMQP content-type property; structured sets that property to the envelope's media type.
 *   1.0.2 names the prefix `cloudEvents:`; 1.0.3 adds `cloudEvents_` and asks consumers to read
 *   both, so `:` is what every consumer understands. A `timestamp` typed value would carry whole
 *   seconds in AMQP 0-9-1, so `time` goes as its RFC 3339 string (the binding allows either).
 *
 * Structured mode embeds the payload without re-serialising it (json-format.md 3.1.1): JSON text
 * verbatim as `data`, other text as a JSON string in `data`, bytes as `data_base64`.
 */

const SPEC_VERSION = '1.0';
/**
 * The media type of a structured event (json-format.md). The bindings' examples write
 * `charset=UTF-8`; a charset is case-insensitive (RFC 2046), and the JavaScript SDK's HTTP
 * binding knows only the lower-case form (an exact lookup), so that is the one that every
 * reader takes.
 */
export const STRUCTURED_CONTENT_TYPE = 'application/cloudevents+json; charset=utf-8';

type CloudEventsMode = 'binary' | 'structured';

/** How a protocol binding carries attributes in binary mode. */
export interface Binding {
  readonly name: 'kafka' | 'amqp';
  /** The prefix of an attribute's header (application property) name. */
  readonly prefix: string;
  /** The header that carries a content type (Kafka); null where a message property does (AMQP). */
  readonly contentTypeHeader: string | null;
  /** Header names the binding reads as CloudEvents metadata: a row header may not use them. */
  readonly reserved: RegExp;
}

export const KAFKA_BINDING: Binding = {
  name: 'kafka',
  prefix: 'ce_',
  contentTypeHeader: 'content-type',
  // Receivers (the JavaScript SDK among them) match header names case-insensitively.
  reserved: /^(?:ce_|content-type$)/i,
};

export const AMQP_BINDING: Binding = {
  name: 'amqp',
  prefix: 'cloudEvents:',
  contentTypeHeader: null,
  reserved: /^cloudEvents[:_]/i,
};

/**
 * What the CloudEvents String type forbids (spec.md, Type System): control characters
 * (U+0000–U+001F, U+007F–U+009F), noncharacters and unpaired surrogates.
 */
const FORBIDDEN = /[\p{Cc}\p{Noncharacter_Code_Point}\p{Cs}]/u;

const SOURCE_USE: TemplateUse = {
  what: 'CloudEvents source template',
  reason: 'missing_ce_attribute',
  // A field value is one URI component: percent-encoded, so any value makes a URI-reference.
  escape: encodeURIComponent,
};

/** One outbox event, as the mapper read it. */
export interface EventInput {
  readonly id: string;
  readonly type: string | null;
  /** aggregateid. */
  readonly key: string;
  readonly txn: TxnRef;
  readonly payload: string | Buffer;
  readonly contentType: string;
  /** The outbox fields and the row's other columns, for the source template. */
  readonly fields: Readonly<Record<string, string | null>>;
  readonly raw: Readonly<Record<string, string | null>> | null;
}

/** The body and content type to send; the attributes went into the headers (binary mode). */
export interface Encoded {
  readonly payload: string | Buffer;
  readonly contentType: string;
}

export class CloudEventsEncoder {
  /** The columns the source template reads: the mapper decodes them with the row. */
  readonly fields: readonly string[];
  private readonly attr: { specversion: string; id: string; source: string; type: string; subject: string; time: string };
  /** `time` of the last transaction seen: formatted once per transaction, not per message. */
  private timeOf: TxnRef | null = null;
  private time = '';

  constructor(
    readonly mode: CloudEventsMode,
    private readonly source: Template,
    readonly binding: Binding,
  ) {
    this.fields = source.fields;
    const p = binding.prefix;
    this.attr = {
      specversion: `${p}specversion`,
      id: `${p}id`,
      source: `${p}source`,
      type: `${p}type`,
      subject: `${p}subject`,
      time: `${p}time`,
    };
  }

  /**
   * The event as a CloudEvent: in binary mode its attributes are added to `headers`; in
   * structured mode the payload becomes the JSON envelope. Throws PoisonError
   * (`missing_ce_attribute`, `bad_ce_attribute`) for an event that would not be a valid one.
   */
  encode(e: EventInput, headers: Record<string, string>): Encoded {
    const type = e.type;
    if (type === null || type === '') {
      throw new PoisonError(
        'missing_ce_attribute',
        `CloudEvents attribute type (the type column) is ${type === null ? 'null' : 'empty'} for id ${e.id}`,
      );
    }
    for (const name in headers) {
      if (this.binding.reserved.test(name)) {
        throw new PoisonError(
          'bad_ce_attribute',
          `header ${name} of id ${e.id} is a name the CloudEvents ${this.binding.name} binding reserves; the relay writes those itself`,
        );
      }
    }
    checkString('id', e.id, e.id);
    checkString('type', type, e.id);
    // subject is optional, and when present must be non-empty.
    const subject = e.key === '' ? null : e.key;
    if (subject !== null) checkString('subject', subject, e.id);
    const source = renderTemplate(this.source, e.fields, e.raw, SOURCE_USE);
    const time = this.timeFor(e.txn, e.id);
    if (this.mode === 'structured') {
      if (this.binding.contentTypeHeader !== null) headers[this.binding.contentTypeHeader] = STRUCTURED_CONTENT_TYPE;
      return { payload: envelope(e.id, source, type, subject, time, e.contentType, e.payload), contentType: STRUCTURED_CONTENT_TYPE };
    }
    const a = this.attr;
    headers[a.specversion] = SPEC_VERSION;
    headers[a.id] = e.id;
    headers[a.source] = source;
    headers[a.type] = type;
    if (subject !== null) headers[a.subject] = subject;
    headers[a.time] = time;
    if (this.binding.contentTypeHeader !== null) headers[this.binding.contentTypeHeader] = e.contentType;
    return { payload: e.payload, contentType: e.contentType };
  }

  private timeFor(txn: TxnRef, id: string): string {
    if (txn !== this.timeOf) {
      this.time = rfc3339(txn.commitTimeMs, id);
      this.timeOf = txn;
    }
    return this.time;
  }
}

/** The encoder for the configured sink, or null when CloudEvents are off. */
export function cloudEventsFor(cfg: SinkConfig): CloudEventsEncoder | null {
  const ce = cfg.cloudevents;
  if (ce.mode === 'off') return null;
  return new CloudEventsEncoder(ce.mode, ce.source, cfg.type === 'rabbitmq' ? AMQP_BINDING : KAFKA_BINDING);
}

/** A commit time as RFC 3339 (UTC, milliseconds): `2026-05-04T10:11:12.345Z`. */
export function rfc3339(ms: number, id: string): string {
  const d = new Date(ms);
  const year = d.getUTCFullYear();
  // toISOString writes years outside 0000–9999 as ±YYYYYY, which RFC 3339 has no form for.
  if (!(year >= 0 && year <= 9999)) {
    throw new PoisonError('bad_ce_attribute', `CloudEvents attribute time: ${ms} ms is not a time RFC 3339 can write (id ${id})`);
  }
  return d.toISOString();
}

function checkString(attribute: string, value: string, id: string): void {
  const bad = FORBIDDEN.exec(value);
  if (bad === null) return;
  const at = (bad[0].codePointAt(0) as number).toString(16).toUpperCase().padStart(4, '0');
  throw new PoisonError(
    'bad_ce_attribute',
    `CloudEvents attribute ${attribute} of id ${id.slice(0, 200)} holds U+${at}, which the CloudEvents String type forbids`,
  );
}

/** `application/json`, `text/json`, `application/vnd.x+json`: the media types json-format.md calls JSON. */
export function declaresJson(contentType: string): boolean {
  return /^[^/;\s]+\/(?:[^;\s]*\+)?json\s*(?:;|$)/i.test(contentType);
}

/**
 * The JSON event format, written out: attributes as JSON strings (JSON.stringify of a string is
 * exact), the payload as written. A JSON payload is valid JSON text by construction (Postgres's
 * json/jsonb output, or a span the logical-message scanner validated), so it goes in verbatim.
 */
export function envelope(
  id: string,
  source: string,
  type: string,
  subject: string | null,
  time: string,
  contentType: string,
  payload: string | Buffer,
): string {
  let out = `{"specversion":"${SPEC_VERSION}","id":${JSON.stringify(id)},"source":${JSON.stringify(source)},"type":${JSON.stringify(type)}`;
  if (subject !== null) out += `,"subject":${JSON.stringify(subject)}`;
  out += `,"time":"${time}","datacontenttype":${JSON.stringify(contentType)}`;
  if (typeof payload !== 'string') return `${out},"data_base64":"${payload.toString('base64')}"}`;
  return `${out},"data":${declaresJson(contentType) ? payload : JSON.stringify(payload)}}`;
}
