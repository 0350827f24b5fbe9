import { readFileSync } from 'node:fs';
import type { TSchema } from '@sinclair/typebox';
import { ConfigError } from '../errors.js';
import { registerSecrets } from '../redact.js';
import type { SecretKind } from './schema-kit.js';

/**
 * The secrets of a config, registered for redaction before anything can print them. A config
 * error may print a value (`http.port: must be an integer, got "…"`), and the value may be a
 * secret written in the wrong place (`port: ${DB_PASSWORD}`): so the secrets the schema marks
 * (`x-secret`) are registered from the document as written, before it is validated, and a
 * secret file's content the moment it is read. Nothing here keeps a list of keys: the schema
 * says which keys are secret.
 */

/**
 * The secrets a parsed, interpolated document holds at its `x-secret` keys: a `value` key's
 * value (text, or a number YAML made of it), a `url` key's password (as written and decoded), a `file`
 * key's content. It runs before validation, so it follows the schema where the document has its
 * shape and skips the rest; a file it cannot read is left for the compilation to report.
 */
export function secretsIn(schema: TSchema, doc: unknown): string[] {
  const out: string[] = [];
  const walk = (s: TSchema, v: unknown): void => {
    if (v === undefined || v === null) return;
    const kind = s['x-secret'] as SecretKind | undefined;
    // A number too (validate.ts refuses it unquoted, but another error may come first); not
    // true or false, which would mask those words everywhere.
    if (kind === 'value' && (typeof v === 'string' || typeof v === 'number')) out.push(String(v));
    if (kind === 'url' && typeof v === 'string') out.push(...urlPassword(v));
    if (kind === 'file' && typeof v === 'string') out.push(...fileSecret(v));
    if (s.type === 'object' && typeof v === 'object' && !Array.isArray(v)) {
      for (const [key, child] of Object.entries(s.properties as Record<string, TSchema>)) walk(child, (v as Record<string, unknown>)[key]);
    } else if (s.type === 'array') {
      for (const item of Array.isArray(v) ? v : [v]) walk(s.items as TSchema, item);
    } else if (Array.isArray(s.anyOf)) {
      for (const alternative of s.anyOf as TSchema[]) if (alternative.type === 'object') walk(alternative, v);
    }
  };
  walk(schema, doc);
  return out;
}

/**
 * The password of a `scheme://user:password@host` URL, as written and decoded. The userinfo
 * runs to the last '@' of the authority (a raw '@' in a password is kept); the URL need not be
 * valid, since an invalid one is what an error would print.
 */
export function urlPassword(url: string): string[] {
  const userinfo = /^[a-z][a-z0-9+.-]*:\/\/([^/?#]*)@/is.exec(url)?.[1];
  const colon = userinfo?.indexOf(':') ?? -1;
  if (userinfo === undefined || colon < 0) return [];
  const raw = userinfo.slice(colon + 1);
  try {
    return [raw, decodeURIComponent(raw)];
  } catch {
    return [raw];
  }
}

function fileSecret(file: string): string[] {
  try {
    return [readFileSync(file, 'utf8').replace(/\r?\n$/, '')];
  } catch {
    return [];
  }
}

/** Reads a file a key names (a CA, a certificate), one trailing newline stripped. */
export function readConfigFile(path: string, file: string, what = ''): string {
  try {
    return readFileSync(file, 'utf8').replace(/\r?\n$/, '');
  } catch (err) {
    throw new ConfigError(path, `cannot read ${what ? `${what} ` : ''}${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

/**
 * Reads a secret file (a `file` key: a password, a private key; a `${file:…}`) and registers its
 * content for redaction.
 */
export function readSecret(path: string, file: string, what = ''): string {
  const secret = readConfigFile(path, file, what);
  registerSecrets([secret]);
  return secret;
}
