/**
 * Maps keyed by data (header names, column names) are plain objects, and every key is an
 * ordinary key: `__proto__`, `constructor` and `toString` too.
 *
 * Plain, not null-prototype: V8 keeps a null-prototype object in dictionary mode, which made
 * building a header map and walking it (as every sink does) about 6x slower, measured. On a
 * plain object two things need care:
 * - writing: `o[k] = v` with k `__proto__` calls Object.prototype's setter and stores nothing,
 *   so a key taken from data is written with setOwn;
 * - reading: `constructor`, `toString`, `__proto__` are inherited, so a lookup by a key taken
 *   from data asks Object.hasOwn first, never `k in o` or `o[k] !== undefined`.
 * Spreads, Object.keys, for…in and JSON.stringify see an own `__proto__` like any other key.
 */
export function setOwn<T>(o: Record<string, T>, key: string, value: T): void {
  if (key === '__proto__') Object.defineProperty(o, key, { value, writable: true, enumerable: true, configurable: true });
  else o[key] = value;
}
