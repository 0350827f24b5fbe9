import type { Template } from '../config/template.js';
import { PoisonError, type PoisonReason } from '../errors.js';

/** What a template renders and how: its name in errors, the poison reason of a missing field, the escaping of values. */
export interface TemplateUse {
  readonly what: string;
  readonly reason: PoisonReason;
  /** Applied to each field value (a URI's percent-encoding); null: values go in as they are. */
  readonly escape: ((value: string) => string) | null;
}

/** The destination (topic, routing key): field values as they are, a missing one leaves no route. */
const DESTINATION: TemplateUse = { what: 'destination template', reason: 'missing_route', escape: null };

/**
 * Renders a template, looking each field up in `fields` first, then in `raw` (the row's other
 * columns). A field that is null or empty makes the message poison (for a destination: no route).
 */
export function renderTemplate(
  t: Template,
  fields: Readonly<Record<string, string | null>>,
  raw: Readonly<Record<string, string | null>> | null = null,
  use: TemplateUse = DESTINATION,
): string {
  let out = '';
  for (const part of t.parts) {
    if ('literal' in part) {
      out += part.literal;
      continue;
    }
    const f = part.field;
    // A value is a string or null; anything else is not a member of that map but one that
    // Object.prototype lends it (a column named constructor or toString): look further, or miss.
    let v: unknown = fields[f];
    if (v !== null && typeof v !== 'string') v = raw?.[f];
    if (typeof v !== 'string' || v === '') {
      throw new PoisonError(use.reason, `${use.what} "${t.source}" needs {${part.field}}, which is ${v === '' ? 'empty' : 'null'}`);
    }
    out += use.escape === null ? v : use.escape(v);
  }
  return out;
}
