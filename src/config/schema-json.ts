import { ConfigSchema } from './schema.js';

/** Any scalar may be written as a `${VAR}` to be interpolated: editors must accept that. */
const INTERPOLATED = { type: 'string', pattern: '\\$\\{' };

/**
 * The JSON Schema of the config file, for editors (`config/outboxd.schema.json`): the declaration
 * of schema.ts as JSON, where every scalar may also be a `${VAR}` string and a string list also a single
 * comma-separated string.
 */
export function toJsonSchema(): Record<string, unknown> {
  type Node = Record<string, unknown>;
  const relax = (s: Node): Node => {
    if (s.type === 'object') {
      const props = s.properties as Record<string, Node>;
      const rules = [
        // A secret and its file: not both, and (for x-one-of) one of them.
        ...((s['x-exclusive'] as string[][] | undefined) ?? []).map((keys) => ({ not: { required: keys } })),
        ...((s['x-one-of'] as string[][] | undefined) ?? []).map((keys) => ({ anyOf: keys.map((k) => ({ required: [k] })) })),
      ];
      return {
        ...s,
        properties: Object.fromEntries(Object.entries(props).map(([k, v]) => [k, relax(v)])),
        ...(rules.length > 0 ? { allOf: rules } : {}),
      };
    }
    if (s.type === 'array') {
      const arr = { ...s, items: relax(s.items as Node) };
      return s['x-split'] ? { description: s.description, anyOf: [arr, { type: 'string' }] } : arr;
    }
    if (Array.isArray(s.anyOf)) return { ...s, anyOf: [...(s.anyOf as Node[]).map(relax), INTERPOLATED] };
    const { description, default: fallback, ...rest } = s;
    if (rest.type === 'string' && rest.pattern === undefined) return s;
    return { description, ...(fallback === undefined ? {} : { default: fallback }), anyOf: [rest, INTERPOLATED] };
  };
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://outboxd.dev/config/outboxd.schema.json',
    title: 'outboxd configuration',
    ...relax(JSON.parse(JSON.stringify(ConfigSchema)) as Node),
  };
}
