import { ConfigError } from '../errors.js';
import { parseDurationMs, parseSizeBytes } from './units.js';

/**
 * A cursor over one YAML mapping that knows its path. Every read checks the type and names the
 * path on error; unknown keys are rejected when the cursor is made.
 */
export class Section {
  private constructor(
    private readonly raw: Record<string, unknown>,
    readonly path: string,
  ) {}

  static of(raw: unknown, path: string, allowed: readonly string[]): Section {
    if (raw === undefined || raw === null) return new Section({}, path);
    if (typeof raw !== 'object' || Array.isArray(raw)) {
      throw new ConfigError(path, `must be a mapping, got ${describe(raw)}`);
    }
    const rec = raw as Record<string, unknown>;
    for (const key of Object.keys(rec)) {
      if (!allowed.includes(key)) {
        const hint = closest(key, allowed);
        throw new ConfigError(
          join(path, key),
          `unknown key${hint ? ` (did you mean "${hint}"?)` : ''}; allowed here: ${allowed.join(', ')}`,
        );
      }
    }
    return new Section(rec, path);
  }

  at(key: string): string {
    return join(this.path, key);
  }

  has(key: string): boolean {
    return this.raw[key] !== undefined && this.raw[key] !== null;
  }

  raw_(key: string): unknown {
    return this.raw[key];
  }

  section(key: string, allowed: readonly string[]): Section {
    return Section.of(this.raw[key], this.at(key), allowed);
  }

  optString(key: string): string | undefined {
    const v = this.raw[key];
    if (v === undefined || v === null) return undefined;
    if (typeof v === 'number' || typeof v === 'boolean') return String(v);
    if (typeof v !== 'string') throw new ConfigError(this.at(key), `must be a string, got ${describe(v)}`);
    return v;
  }

  string(key: string, fallback?: string): string {
    const v = this.optString(key);
    if (v !== undefined && v !== '') return v;
    if (fallback !== undefined) return fallback;
    throw new ConfigError(this.at(key), 'is required');
  }

  oneOf<T extends string>(key: string, allowed: readonly T[], fallback?: T): T {
    const v = this.string(key, fallback);
    if (!(allowed as readonly string[]).includes(v)) {
      throw new ConfigError(this.at(key), `must be one of ${allowed.join(', ')}, got "${v}"`);
    }
    return v as T;
  }

  identifier(key: string, fallback?: string): string {
    const v = this.string(key, fallback);
    // Slot and publication names go into replication commands unquoted by the library.
    if (!/^[a-z_][a-z0-9_]{0,62}$/.test(v)) {
      throw new ConfigError(this.at(key), `must be a lower-case identifier ([a-z_][a-z0-9_]*, at most 63 chars), got "${v}"`);
    }
    return v;
  }

  int(key: string, fallback: number, range: { min?: number; max?: number } = {}): number {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    const n = typeof v === 'string' && /^\s*-?\d+\s*$/.test(v) ? Number(v) : v;
    if (typeof n !== 'number' || !Number.isInteger(n)) {
      throw new ConfigError(this.at(key), `must be an integer, got ${describe(v)}`);
    }
    checkRange(this.at(key), n, range, String(n));
    return n;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.raw[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v === 'boolean') return v;
    if (v === 'true') return true;
    if (v === 'false') return false;
    throw new ConfigError(this.at(key), `must be true or false, got ${describe(v)}`);
  }

  /** A duration such as `500ms`, `10s`, `5m`; returns milliseconds. */
  durationMs(key: string, fallback: string, range: { min?: number; max?: number } = {}): number {
    const v = this.raw[key] ?? fallback;
    const ms = typeof v === 'string' ? parseDurationMs(v) : v === 0 ? 0 : undefined;
    if (ms === undefined) {
      throw new ConfigError(this.at(key), `must be a duration like 500ms, 10s or 5m, got ${describe(v)}`);
    }
    checkRange(this.at(key), ms, range, String(v));
    return ms;
  }

  /** A size such as `64MiB`, `1MB`, `4096`; returns bytes. */
  sizeBytes(key: string, fallback: string, range: { min?: number; max?: number } = {}): number {
    const v = this.raw[key] ?? fallback;
    const bytes = typeof v === 'string' ? parseSizeBytes(v) : typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : undefined;
    if (bytes === undefined) {
      throw new ConfigError(this.at(key), `must be a size like 64MiB, 1MB or 4096, got ${describe(v)}`);
    }
    checkRange(this.at(key), bytes, range, String(v));
    return bytes;
  }

  /** A list; a single scalar is accepted as a one-element list. Returns items with their paths. */
  list(key: string): Array<{ value: unknown; path: string }> {
    const v = this.raw[key];
    if (v === undefined || v === null) return [];
    const items = Array.isArray(v) ? v : typeof v === 'object' ? null : [v];
    if (items === null) throw new ConfigError(this.at(key), `must be a list, got ${describe(v)}`);
    return items.map((value, i) => ({ value, path: Array.isArray(v) ? `${this.at(key)}[${i}]` : this.at(key) }));
  }

  stringList(key: string): string[] {
    return this.list(key).flatMap(({ value, path }) => {
      if (typeof value !== 'string' || value === '') {
        throw new ConfigError(path, `must be a non-empty string, got ${describe(value)}`);
      }
      // Accept "a,b" too: env vars commonly carry lists that way.
      return value
        .split(',')
        .map((s) => s.trim())
        .filter((s) => s !== '');
    });
  }
}

function checkRange(path: string, n: number, range: { min?: number; max?: number }, shown: string): void {
  if (range.min !== undefined && n < range.min) throw new ConfigError(path, `must be at least ${range.min}, got ${shown}`);
  if (range.max !== undefined && n > range.max) throw new ConfigError(path, `must be at most ${range.max}, got ${shown}`);
}

export function join(path: string, key: string): string {
  return path ? `${path}.${key}` : key;
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (typeof v === 'object') return 'a mapping';
  if (typeof v === 'string') return `"${v.length > 40 ? `${v.slice(0, 40)}…` : v}"`;
  return `${typeof v} ${String(v)}`;
}

function closest(key: string, allowed: readonly string[]): string | undefined {
  let best: string | undefined;
  let bestD = 3;
  for (const a of allowed) {
    const d = distance(key.toLowerCase(), a.toLowerCase());
    if (d < bestD) {
      bestD = d;
      best = a;
    }
  }
  return best;
}

function distance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0] as number;
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j] as number;
      dp[j] = Math.min((dp[j] as number) + 1, (dp[j - 1] as number) + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length] as number;
}
