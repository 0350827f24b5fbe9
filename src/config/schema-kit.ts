import { type TOptional, type TSchema, Type as T } from '@sinclair/typebox';

/**
 * The builders the config declaration (schema.ts) is written with: each makes a TypeBox schema
 * with outboxd's `x-` annotations (see schema.ts), and marks a key that has a default.
 */

/** Duration: `500ms`, `10s`, `1.5m`, `2h`, or `0`. */
export const DURATION_PATTERN = '^\\s*(\\d+(\\.\\d+)?\\s*(ms|s|m|h)|0)\\s*$';
/** Size: `64MiB`, `1MB`, `512KiB`, `100B`, or a byte count. */
export const SIZE_PATTERN = '^\\s*\\d+(\\.\\d+)?\\s*(B|KB|MB|GB|KiB|MiB|GiB)?\\s*$';
/** Slot and publication names go into replication commands: lower-case identifiers. */
export const IDENTIFIER_PATTERN = '^[a-z_][a-z0-9_]{0,62}$';

export type Range = { min?: number; max?: number };

/**
 * A key that may be left out of the file because it has a default (or, for a section, because
 * its keys have defaults). A type-only brand: after validation it is always present.
 */
declare const DEFAULTED: unique symbol;
export type Defaulted<S extends TSchema> = TOptional<S> & { readonly [DEFAULTED]: true };
export const withDefault = <S extends TSchema>(s: S): Defaulted<S> => T.Optional(s) as Defaulted<S>;

export const duration = (fallback: string, description: string, range: Range = {}) =>
  withDefault(
    T.String({ default: fallback, description, pattern: DURATION_PATTERN, 'x-kind': 'duration', 'x-min': range.min, 'x-max': range.max }),
  );
export const size = (fallback: string, description: string, range: Range = {}) =>
  withDefault(
    T.String({ default: fallback, description, pattern: SIZE_PATTERN, 'x-kind': 'size', 'x-min': range.min, 'x-max': range.max }),
  );
export const int = (fallback: number, description: string, range: Range = {}) =>
  withDefault(T.Integer({ default: fallback, description, minimum: range.min, maximum: range.max }));
export const bool = (fallback: boolean, description: string) => withDefault(T.Boolean({ default: fallback, description }));
export const str = (fallback: string, description: string) => withDefault(T.String({ default: fallback, description }));
export const optStr = (description: string) => T.Optional(T.String({ description }));
export const required = (description: string, extra: object = {}) => T.String({ description, minLength: 1, ...extra });
export const identifier = (fallback: string, description: string) =>
  withDefault(T.String({ default: fallback, description, pattern: IDENTIFIER_PATTERN, 'x-kind': 'identifier' }));
export const template = (fallback: string, description: string) =>
  withDefault(T.String({ default: fallback, description, 'x-kind': 'template' }));
export const optTemplate = (description: string) => T.Optional(T.String({ description, 'x-kind': 'template' }));
export const enumOf = <const V extends string>(values: readonly [V, ...V[]], description: string, fallback?: V) =>
  T.Union(
    values.map((v) => T.Literal(v)),
    fallback === undefined ? { description } : { default: fallback, description },
  );
export const oneOf = <const V extends string>(values: readonly [V, ...V[]], fallback: V, description: string) =>
  withDefault(enumOf(values, description, fallback));
/** A mapping that accepts only its own keys. */
export const section = <P extends Record<string, TSchema>>(props: P, description = '', extra: object = {}) =>
  T.Object(props, { additionalProperties: false, description, ...extra });
/** A section that may be absent (its keys then take their defaults). */
export const optSection = <P extends Record<string, TSchema>>(props: P, description = '', extra: object = {}) =>
  withDefault(section(props, description, { default: {}, ...extra }));
/** A section that may be absent and has no defaults to fill: absent stays absent. */
export const maybeSection = <P extends Record<string, TSchema>>(props: P, description = '', extra: object = {}) =>
  T.Optional(section(props, description, extra));

export const backoff = (initial: string, max: string, what: string) =>
  optSection({
    initial: duration(initial, `The first backoff ${what}.`, { min: 1 }),
    max: duration(max, 'The backoff cap: attempt n waits a random time in [b/2, b], b = min(max, initial·2^(n−1)). At least `initial`.', {
      min: 1,
    }),
  });

/**
 * What a secret-bearing key holds (`x-secret`): the secret itself, a URL whose password is one,
 * or the name of a file that holds one. Secrets are registered for redaction before the file is
 * validated (config/secrets.ts), and a config error never prints the value of a `value` or `url`
 * key.
 */
export type SecretKind = 'value' | 'url' | 'file';
/** An optional secret, written in the file (or as `${VAR}`). */
export const optSecret = (description: string) => T.Optional(T.String({ description, 'x-secret': 'value' }));
/** An optional file that holds a secret. */
export const secretFile = (description: string) => T.Optional(T.String({ description, 'x-secret': 'file' }));
