import {
  type Static,
  type TArray,
  type TObject,
  type TOptional,
  type TProperties,
  type TSchema,
  type TString,
  Type as T,
} from '@sinclair/typebox';
import { ConfigError } from '../errors.js';
import type { Template } from './template.js';

/**
 * The builders the config declaration (schema.ts) is written with: each makes a TypeBox schema
 * with outboxd's `x-` annotations (see schema.ts), marks a key that has a default, and says what
 * the key compiles to in the Config the code uses (compile.ts walks the declaration):
 * - a duration `statusInterval: 10s` becomes `statusIntervalMs: 10000` (`seconds`: `…Seconds`);
 * - a size stays under its name (each is called `…Bytes`) as a byte count;
 * - a template is parsed;
 * - a file key (`caFile`, a secret's `passwordFile`) becomes the file's content under the name
 *   without `File`, where it takes the place of the secret written inline (`password`);
 * - a section may carry a rule (`compile`) that checks keys against each other and shapes the
 *   result; its return type is the section's type in Config.
 */

declare const COMPILES: unique symbol;
/**
 * Type-only: what a key compiles to. V is its value in Config, Suffix what its name gains
 * (`Ms`), StripFile whether its name loses `File`.
 */
export type Compiles<V, Suffix extends string = '', StripFile extends boolean = false> = {
  readonly [COMPILES]: { value: V; suffix: Suffix; stripFile: StripFile };
};

/**
 * A section's rule: gets the section compiled key by key (`out`), the section as validated
 * (`input`: which of a secret and its file was written), its YAML path and the whole validated
 * file (`root`), and returns the section as Config holds it. Errors are ConfigErrors naming the key.
 */
export type Rule<P extends TProperties, R> = (out: Walked<P>, input: Filled<TObject<P>>, at: string, root: Root) => R;
/** The whole file, for the few defaults another section decides (the transactional id takes the slot). */
export type Root = { readonly postgres: { readonly slot: string; readonly shard?: { readonly index: number; readonly count: number } } };

/** The value type of a validated schema: defaulted keys present, optional ones maybe undefined. */
export type Filled<S> =
  S extends TObject<infer P>
    ? {
        [K in keyof P]: P[K] extends Defaulted<TSchema>
          ? Value<P[K]>
          : P[K] extends TOptional<TSchema>
            ? Value<P[K]> | undefined
            : Value<P[K]>;
      }
    : Value<S>;
type Value<S> = S extends TObject ? Filled<S> : S extends TArray<infer I> ? Value<I>[] : S extends TSchema ? Static<S> : never;

/** The type in Config of a key declared as S. */
export type Compiled<S> = S extends { readonly [COMPILES]: { value: infer V } }
  ? V
  : S extends TObject<infer P>
    ? Walked<P>
    : S extends TArray<infer I>
      ? Compiled<I>[]
      : S extends TSchema
        ? Static<S>
        : never;
/** A section compiled key by key, before its rule: names and values as the builders say. */
export type Walked<P extends TProperties> = {
  -readonly [K in keyof P & string as NameOf<K, P[K]>]:
    | Compiled<P[K]>
    | (P[K] extends Defaulted<TSchema> ? never : P[K] extends TOptional<TSchema> ? undefined : never);
};
type NameOf<K extends string, S> = S extends { readonly [COMPILES]: { suffix: infer X extends string; stripFile: infer F } }
  ? `${F extends true ? (K extends `${infer B}File` ? B : K) : K}${X}`
  : K;

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

/** A duration, compiled to milliseconds under the key's name + `Ms`. */
export const duration = (fallback: string, description: string, range: Range = {}) =>
  withDefault(
    T.String({
      default: fallback,
      description,
      pattern: DURATION_PATTERN,
      'x-kind': 'duration',
      'x-min': range.min,
      'x-max': range.max,
    }) as TString & Compiles<number, 'Ms'>,
  );
/** A duration, compiled to whole seconds (rounded) under the key's name + `Seconds`. */
export const seconds = (fallback: string, description: string, range: Range = {}) =>
  withDefault(
    T.String({
      default: fallback,
      description,
      pattern: DURATION_PATTERN,
      'x-kind': 'duration',
      'x-unit': 's',
      'x-min': range.min,
      'x-max': range.max,
    }) as TString & Compiles<number, 'Seconds'>,
  );
/** A size, compiled to bytes under the same name (which ends in `Bytes`). */
export const size = (fallback: string, description: string, range: Range = {}) =>
  withDefault(
    T.String({
      default: fallback,
      description,
      pattern: SIZE_PATTERN,
      'x-kind': 'size',
      'x-min': range.min,
      'x-max': range.max,
    }) as TString & Compiles<number>,
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
  withDefault(T.String({ default: fallback, description, 'x-kind': 'template' }) as TString & Compiles<Template>);
export const optTemplate = (description: string) =>
  T.Optional(T.String({ description, 'x-kind': 'template' }) as TString & Compiles<Template>);
/** A file the key names (a CA, a certificate), compiled to its content under the name without `File`. */
export const textFile = (description: string) =>
  T.Optional(T.String({ description, 'x-file': 'text' }) as TString & Compiles<string, '', true>);
export const enumOf = <const V extends string>(values: readonly [V, ...V[]], description: string, fallback?: V) =>
  T.Union(
    values.map((v) => T.Literal(v)),
    fallback === undefined ? { description } : { default: fallback, description },
  );
export const oneOf = <const V extends string>(values: readonly [V, ...V[]], fallback: V, description: string) =>
  withDefault(enumOf(values, description, fallback));
/** A mapping that accepts only its own keys. */
export const section = <P extends TProperties>(props: P, description = '', extra: object = {}) =>
  T.Object(props, { additionalProperties: false, description, ...extra });
/** A mapping with a rule (see Rule): Config holds what the rule returns. */
export const ruled = <P extends TProperties, R>(props: P, rule: Rule<P, R>, description = '', extra: object = {}) =>
  T.Object(props, { additionalProperties: false, description, ...extra, 'x-compile': rule }) as TObject<P> & Compiles<R>;
/** A section that may be absent (its keys then take their defaults). */
export const optSection = <P extends TProperties>(props: P, description = '', extra: object = {}) =>
  withDefault(section(props, description, { default: {}, ...extra }));
/** A section that may be absent and has no defaults to fill: absent stays absent. */
export const maybeSection = <P extends TProperties>(props: P, description = '', extra: object = {}) =>
  T.Optional(section(props, description, extra));
/** A key (a ruled section) that may be absent: absent stays absent. */
export const maybe = <S extends TSchema>(s: S) => T.Optional(s);
/** A ruled section that may be absent: its keys then take their defaults. */
export const defaulted = <S extends TObject>(s: S): Defaulted<S> => withDefault({ ...s, default: {} });

export const backoff = (initial: string, max: string, what: string) =>
  defaulted(
    ruled(
      {
        initial: duration(initial, `The first backoff ${what}.`, { min: 1 }),
        max: duration(
          max,
          'The backoff cap: attempt n waits a random time in [b/2, b], b = min(max, initial·2^(n−1)). At least `initial`.',
          { min: 1 },
        ),
      },
      (b, _, at) => {
        if (b.maxMs < b.initialMs) throw new ConfigError(`${at}.max`, `must be at least ${at}.initial`);
        return b;
      },
    ),
  );

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
export const secretFile = (description: string) =>
  T.Optional(T.String({ description, 'x-secret': 'file' }) as TString & Compiles<string, '', true>);
