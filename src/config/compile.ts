import type { TSchema } from '@sinclair/typebox';
import type { Compiled, Root, Rule } from './schema-kit.js';
import { readConfigFile, readSecret } from './secrets.js';
import { parseTemplate } from './template.js';
import { parseDurationMs, parseSizeBytes } from './units.js';
import { join } from './validate.js';

/**
 * From the file as validated (validate.ts: defaults filled in) to the Config the code uses, by
 * one walk over the declaration (schema.ts): each key is compiled as its builder says
 * (schema-kit.ts: durations to `…Ms`, sizes to bytes, templates parsed, files read), then a
 * section's rule, if it has one, checks its keys against each other and shapes the result.
 * Nothing here knows a key by name.
 */
export function compile<S extends TSchema>(schema: S, value: unknown, at: string, root: Root): Compiled<S> {
  return walk(schema, value, at, root) as Compiled<S>;
}

function walk(schema: TSchema, value: unknown, at: string, root: Root): unknown {
  if (value === undefined) return undefined;
  let out: unknown = value;
  if (schema.type === 'object') out = mapping(schema, value as Record<string, unknown>, at, root);
  else if (schema.type === 'array') out = (value as unknown[]).map((v, i) => walk(schema.items as TSchema, v, `${at}[${i}]`, root));
  else if (Array.isArray(schema.anyOf) && typeof value === 'object') {
    // A union with a mapping (tls: true or the files): the mapping's keys compile as declared.
    const files = (schema.anyOf as TSchema[]).find((s) => s.type === 'object') as TSchema;
    out = mapping(files, value as Record<string, unknown>, at, root);
  } else if (schema['x-kind'] === 'duration') {
    const ms = parseDurationMs(value as string) as number;
    out = schema['x-unit'] === 's' ? Math.round(ms / 1000) : ms;
  } else if (schema['x-kind'] === 'size') out = parseSizeBytes(value as string) as number;
  else if (schema['x-kind'] === 'template') out = parseTemplate(value as string);
  const rule = schema['x-compile'] as Rule<never, unknown> | undefined;
  return rule === undefined ? out : rule(out as never, value as never, at, root);
}

function mapping(schema: TSchema, value: Record<string, unknown>, at: string, root: Root): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, child] of Object.entries(schema.properties as Record<string, TSchema>)) {
    const v = value[key];
    const path = join(at, key);
    if (child['x-secret'] === 'file' || child['x-file'] === 'text') {
      // `passwordFile` compiles to `password`, in place of a password written inline (validate.ts
      // allowed only one of them).
      const name = key.replace(/File$/, '');
      if (v !== undefined) out[name] = child['x-secret'] === 'file' ? readSecret(path, v as string) : readConfigFile(path, v as string);
      else if (!(name in out)) out[name] = undefined;
    } else {
      const name = child['x-kind'] === 'duration' ? `${key}${child['x-unit'] === 's' ? 'Seconds' : 'Ms'}` : key;
      const compiled = walk(child, v, path, root);
      if (compiled !== undefined || !(name in out)) out[name] = compiled;
    }
  }
  return out;
}
