/**
 * The one redaction of outboxd. Every way text leaves the process goes through `redact`: log
 * lines (message, fields, errors and their stacks), the `/livez` and `/readyz` bodies, the CLI's
 * one-line errors and the crash handlers. It removes:
 * - the secrets the config holds (passwords, SASL and TLS key material), wherever they appear,
 *   raw or URL-encoded: `registerSecrets` records them when the config is loaded;
 * - the password of any `scheme://user:password@host` URL, even one holding a raw `@`;
 * - `password=…` in a URL query or a libpq key/value string, and `"password":"…"` in JSON.
 */

const CENSOR = '***';

const secrets = new Set<string>();
let secretPattern: RegExp | null = null;

/** Records secret values so that `redact` removes them from any text (at most once per value). */
export function registerSecrets(values: Iterable<string | undefined | null>): void {
  let changed = false;
  for (const v of values) {
    // Very short values would redact ordinary words; they are still caught in URLs and key=value.
    if (typeof v !== 'string' || v.length < 4) continue;
    for (const form of new Set([v, encodeURIComponent(v)])) {
      if (!secrets.has(form)) {
        secrets.add(form);
        changed = true;
      }
    }
  }
  if (!changed) return;
  // Longest first, so a secret that contains another is removed whole.
  const alternatives = [...secrets].sort((a, b) => b.length - a.length).map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'));
  secretPattern = new RegExp(alternatives.join('|'), 'g');
}

/** For tests: forget the registered secrets. */
export function clearSecrets(): void {
  secrets.clear();
  secretPattern = null;
}

// scheme://user:password@host — the userinfo runs to the last '@' before the host, so a raw '@'
// in the password is covered; a '/', whitespace or a quote ends the authority. The scheme is a
// lookbehind, checked only where `://` is found: as the match's start it was tried at every
// letter, each time across the whole run of letters after it, and a 1 MiB key in a log line
// took minutes (quadratic) with the event loop blocked.
const URL_PASSWORD = /(:\/\/(?<=[a-z][a-z0-9+.-]*:\/\/)[^\s:/@"'`]*:)[^\s/"'`]*@/gi;
const KEY_VALUE = /(\bpass(?:word|wd)?\s*=\s*)(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s&;,'"]+)/gi;
const JSON_FIELD = /("pass(?:word|wd)?"\s*:\s*)"(?:[^"\\]|\\.)*"/gi;

export function redact(text: string): string {
  let out = text;
  if (secretPattern !== null) out = out.replace(secretPattern, CENSOR);
  return out.replace(URL_PASSWORD, `$1${CENSOR}@`).replace(KEY_VALUE, `$1${CENSOR}`).replace(JSON_FIELD, `$1"${CENSOR}"`);
}

/**
 * `redact` over every string in a value: plain objects and arrays are copied, anything else
 * (errors, which the logger's serializer redacts, buffers, dates) is kept as it is.
 */
export function redactDeep(value: unknown, depth = 0): unknown {
  if (typeof value === 'string') return redact(value);
  if (value === null || typeof value !== 'object' || depth > 8) return value;
  const proto = Object.getPrototypeOf(value);
  if (!Array.isArray(value) && proto !== Object.prototype && proto !== null) return value;
  if (Array.isArray(value)) return value.map((v) => redactDeep(v, depth + 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = redactDeep(v, depth + 1);
  return out;
}
