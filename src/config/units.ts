/** Human units in config: durations (`500ms`, `10s`, `5m`) and sizes (`64MiB`, `1MB`). */

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const SIZE_UNITS: Record<string, number> = {
  B: 1,
  KB: 1000,
  MB: 1000 ** 2,
  GB: 1000 ** 3,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
};

/** Parses `250ms`, `10s`, `1.5m`, `2h` or `0` into milliseconds. Returns undefined if malformed. */
export function parseDurationMs(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text);
  if (!m) return undefined;
  const value = Number(m[1]);
  if (m[2] === undefined) return value === 0 ? 0 : undefined; // a bare number is ambiguous, unless 0
  return Math.round(value * (DURATION_UNITS[m[2]] ?? Number.NaN));
}

/** Parses `64MiB`, `1MB`, `512KiB`, `100B` or a bare byte count. Returns undefined if malformed. */
export function parseSizeBytes(text: string): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$/.exec(text);
  if (!m) return undefined;
  const bytes = Number(m[1]) * (m[2] === undefined ? 1 : (SIZE_UNITS[m[2]] ?? Number.NaN));
  return Number.isFinite(bytes) ? Math.round(bytes) : undefined;
}
