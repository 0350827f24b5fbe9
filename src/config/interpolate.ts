import { ConfigError } from '../errors.js';
import { readSecret } from './secrets.js';

/**
 * Expands `${VAR}`, `${VAR:-default}`, `${VAR:?message}` and `${file:/path}` in every string
 * scalar of a parsed YAML document. Expansion happens after parsing, so a value can never change
 * the document's structure, and an error names the YAML path of the string that asked for it.
 * `$${` escapes a literal `${`. What a `${file:…}` reads is taken for a secret (that is what
 * the form is for) and registered for redaction at once.
 */
export function interpolate(value: unknown, env: NodeJS.ProcessEnv, path = ''): unknown {
  if (typeof value === 'string') return expandString(value, env, path);
  if (Array.isArray(value)) return value.map((v, i) => interpolate(v, env, `${path}[${i}]`));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = interpolate(v, env, path ? `${path}.${k}` : k);
    return out;
  }
  return value;
}

const PATTERN = /\$(\$)?\{([^}]*)\}/g;

export function expandString(text: string, env: NodeJS.ProcessEnv, path: string): string {
  return text.replace(PATTERN, (whole, escaped: string | undefined, body: string) => {
    if (escaped) return whole.slice(1);
    if (body.startsWith('file:')) {
      return readSecret(path, body.slice(5).trim(), 'secret file');
    }
    const m = /^([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)(.*))?$/s.exec(body);
    if (!m) throw new ConfigError(path, `bad substitution "\${${body}}": use \${VAR}, \${VAR:-default} or \${VAR:?message}`);
    const [, name, op, arg] = m as unknown as [string, string, string | undefined, string | undefined];
    const v = env[name];
    if (v !== undefined && v !== '') return v;
    if (op === ':-') return arg ?? '';
    if (op === ':?') throw new ConfigError(path, `environment variable ${name} is not set${arg ? `: ${arg}` : ''}`);
    if (v === '') return '';
    throw new ConfigError(path, `environment variable ${name} is not set (write \${${name}:-default} to allow that)`);
  });
}
