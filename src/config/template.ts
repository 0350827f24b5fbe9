/**
 * Templates as the config holds them (`sink.kafka.topic`, `sink.cloudevents.source`): parsed and
 * checked once at config time. Rendering one per message is the mapper's (outbox/template.ts).
 */

/**
 * A destination template such as `outbox.event.{aggregatetype}`: literal text and `{field}`
 * references, parsed once at config time so rendering on the hot path is a join.
 */
export interface Template {
  readonly source: string;
  readonly parts: ReadonlyArray<{ readonly literal: string } | { readonly field: string }>;
  readonly fields: readonly string[];
}

export function parseTemplate(source: string): Template {
  const parts: Array<{ literal: string } | { field: string }> = [];
  const re = /\{([^{}]*)\}|([^{}]+)|([{}])/g;
  for (let m = re.exec(source); m !== null; m = re.exec(source)) {
    if (m[3] !== undefined) throw new Error(`unbalanced "${m[3]}" in template "${source}"`);
    if (m[2] !== undefined) parts.push({ literal: m[2] });
    else {
      const field = (m[1] ?? '').trim();
      if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(field)) throw new Error(`bad field "{${m[1]}}" in template "${source}"`);
      parts.push({ field });
    }
  }
  if (parts.length === 0) throw new Error('template is empty');
  return { source, parts, fields: parts.flatMap((p) => ('field' in p ? [p.field] : [])) };
}

// RFC 3986 URI-reference, for the check of a source template at config time.
const PCT = '%[0-9A-Fa-f]{2}';
const UNRESERVED = 'A-Za-z0-9\\-._~';
const SUB_DELIMS = "!$&'()*+,;=";
const PCHAR = `(?:[${UNRESERVED}${SUB_DELIMS}:@]|${PCT})`;
const SEGMENT = `${PCHAR}*`;
const SEGMENT_NZ = `${PCHAR}+`;
const SEGMENT_NZ_NC = `(?:[${UNRESERVED}${SUB_DELIMS}@]|${PCT})+`;
const AUTHORITY = `(?:(?:[${UNRESERVED}${SUB_DELIMS}:]|${PCT})*@)?(?:\\[[0-9A-Fa-f:.vV]+\\]|(?:[${UNRESERVED}${SUB_DELIMS}]|${PCT})*)(?::[0-9]*)?`;
const QUERY_FRAGMENT = `(?:\\?(?:${PCHAR}|[/?])*)?(?:#(?:${PCHAR}|[/?])*)?`;
const ABSOLUTE_PATH = `/(?:${SEGMENT_NZ}(?:/${SEGMENT})*)?`;
const URI = `[A-Za-z][A-Za-z0-9+.\\-]*:(?://${AUTHORITY}(?:/${SEGMENT})*|${ABSOLUTE_PATH}|${SEGMENT_NZ}(?:/${SEGMENT})*|)${QUERY_FRAGMENT}`;
const RELATIVE_REF = `(?://${AUTHORITY}(?:/${SEGMENT})*|${ABSOLUTE_PATH}|${SEGMENT_NZ_NC}(?:/${SEGMENT})*|)${QUERY_FRAGMENT}`;
const URI_REFERENCE = new RegExp(`^(?:${URI}|${RELATIVE_REF})$`);

export function isUriReference(text: string): boolean {
  return URI_REFERENCE.test(text);
}

/**
 * Why a source template cannot make a CloudEvents source, or null. Field values are
 * percent-encoded, so the template's literal text decides: it is checked with every field as `x`.
 */
export function sourceTemplateProblem(t: Template): string | null {
  const sample = t.parts.map((p) => ('literal' in p ? p.literal : 'x')).join('');
  if (!isUriReference(sample)) return `"${t.source}" does not make a URI-reference (RFC 3986), e.g. "${sample}"`;
  return null;
}
