import { ConfigSchema } from './schema.js';

/** Any scalar may be written as a `${VAR}` to be interpolated: editors must accept that. */
const INTERPOLATED = { type: 'string', pattern: '\\$\\{' };

/**
 * The JSON Schema of the config file, for editors (`config/outboxd.schema.json`): the declaration
 * of schema.ts as JSON, where every scalar may also be a `${VAR}` string, a string list also a
 * single comma-separated string, a duration also the number 0 and a size a byte count.
 *
 * `yaml11`: the file as a YAML 1.1 reader hands it over (Helm's values: the chart's
 * values.schema.json, `configValuesSchema`), where a bare off is false and on is true; an enum
 * that has off (on) takes that boolean, as outboxd does (validate.ts).
 */
export function toJsonSchema(options: { yaml11?: boolean } = {}): Record<string, unknown> {
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
    if (Array.isArray(s.anyOf)) {
      const words = (s.anyOf as Node[]).map((a) => a.const);
      const booleans = options.yaml11 ? [false, true].filter((b) => words.includes(b ? 'on' : 'off')).map((b) => ({ const: b })) : [];
      return { ...s, anyOf: [...(s.anyOf as Node[]).map(relax), ...booleans, INTERPOLATED] };
    }
    const { description, default: fallback, ...rest } = s;
    if (rest.type === 'string' && rest.pattern === undefined) return s;
    const numbers = rest['x-kind'] === 'duration' ? [{ const: 0 }] : rest['x-kind'] === 'size' ? [{ type: 'integer', minimum: 0 }] : [];
    return { description, ...(fallback === undefined ? {} : { default: fallback }), anyOf: [rest, ...numbers, INTERPOLATED] };
  };
  return {
    $schema: 'https://json-schema.org/draft/2020-12/schema',
    $id: 'https://outboxd.dev/config/outboxd.schema.json',
    title: 'outboxd configuration',
    ...relax(JSON.parse(JSON.stringify(ConfigSchema)) as Node),
  };
}

/**
 * The chart's `config` value in helm/outboxd/values.schema.json: the config file's schema as Helm
 * reads values (YAML 1.1), so that `helm install` and `helm template` refuse what outboxd would
 * refuse at start, rather than a pod in a crash loop.
 */
export function configValuesSchema(): Record<string, unknown> {
  const { $schema, $id, title, ...schema } = toJsonSchema({ yaml11: true });
  return {
    ...schema,
    description: 'The outboxd config file (docs/config.md), checked as outboxd checks it; http.port comes from http.port.',
  };
}
