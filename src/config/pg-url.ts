/**
 * libpq's multi-host connection URLs, which node-postgres does not parse:
 * `postgres://u:p@h1:5432,h2:5433/db?target_session_attrs=read-write`. Each host becomes a
 * single-host URL that pg can use as it is, every other part (user, password, database,
 * parameters such as sslmode) unchanged; `target_session_attrs` says which of them to keep
 * (source/connect.ts tries them in order, as libpq does). A URL with one host is passed on
 * untouched.
 */

/** The values of libpq's `target_session_attrs` (PostgreSQL 14's set). */
const TARGET_SESSION_ATTRS = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'] as const;
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];

export interface PgHost {
  /** `host:port` for messages (the port libpq would use: 5432 when none is written). */
  label: string;
  /** The URL with this host alone in its authority. */
  url: string;
}

export interface PgUrl {
  /** In the order written: the order they are tried in. */
  hosts: PgHost[];
  targetSessionAttrs: TargetSessionAttrs;
  /** The URL's password, decoded ('' when it has none): a secret to redact. */
  password: string;
}

const DEFAULT_PORT = '5432';

/** Parses a postgres:// URL with one or more hosts. Throws an Error saying what is wrong. */
export function parsePgUrl(url: string): PgUrl {
  const m = /^(postgres(?:ql)?:\/\/)([^/?#]*)(.*)$/s.exec(url);
  if (!m) throw new Error('must be a postgres:// or postgresql:// URL');
  const [, scheme, authority, rest] = m as unknown as [string, string, string, string];
  // The userinfo runs to the last '@' of the authority, so a raw '@' in a password is kept.
  const at = authority.lastIndexOf('@');
  const userinfo = at >= 0 ? authority.slice(0, at + 1) : '';
  const hostspecs = authority.slice(at + 1).split(',');
  const params = queryOf(rest);
  const tsa = params.get('target_session_attrs') ?? 'any';
  if (!(TARGET_SESSION_ATTRS as readonly string[]).includes(tsa)) {
    throw new Error(`target_session_attrs must be one of ${TARGET_SESSION_ATTRS.join(', ')}, got "${tsa}"`);
  }
  if (hostspecs.length > 1 && (params.has('host') || params.has('port') || params.has('hostaddr'))) {
    throw new Error('lists several hosts in the URL and host, hostaddr or port as parameters; write each host:port in the URL only');
  }
  const hosts = hostspecs.map((spec, i): PgHost => {
    if (spec === '' && hostspecs.length > 1) throw new Error(`host ${i + 1} of the list is empty`);
    const single = hostspecs.length === 1 ? url : `${scheme}${userinfo}${spec}${rest}`;
    let parsed: URL;
    try {
      parsed = new URL(single);
    } catch {
      throw new Error(hostspecs.length === 1 ? 'is not a valid URL' : `host ${i + 1} of the list ("${spec}") is not a valid host[:port]`);
    }
    return { label: `${parsed.hostname || 'localhost'}:${parsed.port || DEFAULT_PORT}`, url: single };
  });
  const raw = new URL((hosts[0] as PgHost).url).password;
  let password = raw;
  try {
    password = decodeURIComponent(raw);
  } catch {
    // A malformed %-escape: the password is the text as written.
  }
  return { hosts, targetSessionAttrs: tsa as TargetSessionAttrs, password };
}

function queryOf(rest: string): URLSearchParams {
  const q = rest.indexOf('?');
  if (q < 0) return new URLSearchParams();
  const hash = rest.indexOf('#', q);
  return new URLSearchParams(rest.slice(q + 1, hash < 0 ? undefined : hash));
}
