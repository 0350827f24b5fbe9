import { LogicalReplicationService, PgoutputPlugin } from 'pg-logical-replication';
import type { PostgresConfig } from '../config/schema.js';
import { OutboxdError, PgConnectionError } from '../errors.js';
import { type Lsn, formatLsn, parseLsn } from '../lsn.js';
import type { Logger } from '../observability/logger.js';
import { classifyPgError, clientConfig } from './postgres.js';

/** A table as a RELATION message describes it. */
export interface Relation {
  readonly relationOid: number;
  readonly schema: string;
  readonly name: string;
  readonly columns: ReadonlyArray<{ readonly name: string; readonly typeOid: number }>;
}

export type IgnoredKind = 'update' | 'delete' | 'truncate' | 'unconfigured_table' | 'foreign_message' | 'non_transactional_message';

/**
 * Receives decoded changes in WAL order. A method returns a promise only when it needs the
 * stream to wait (back-pressure); the stream reads no more WAL until that promise settles.
 * A method that throws stops the stream: nothing after it is processed or confirmed.
 */
export interface ChangeHandler {
  begin(xid: number, commitLsn: Lsn, commitTimeMs: number): void;
  relation(rel: Relation): void;
  insert(rel: Relation, row: Readonly<Record<string, string | null | undefined>>): Promise<void> | undefined;
  message(prefix: string, content: Uint8Array, transactional: boolean, lsn: Lsn): Promise<void> | undefined;
  ignore(kind: IgnoredKind): void;
  commit(endLsn: Lsn): void;
  /**
   * The server says it has sent everything before `lsn` (a keepalive), and every change received
   * before it has been handed to this handler. Returns the LSN that may now be confirmed, if any.
   */
  keepalive(lsn: Lsn): Lsn | null;
}

interface LibraryInternals {
  _connection?: { stream?: { pause(): void; resume(): void } } | null;
}

interface ParserInternals {
  readRelationColumn?: (reader: unknown) => { parser: (raw: string) => unknown };
}

const asText = (raw: string): string => raw;

/**
 * One replication session on the slot, through pg-logical-replication with the settings that
 * the project's field notes on pg-logical-replication 2.5.0 show are needed for at-least-once
 * (docs/adr/0002, 0005):
 * - no auto-ack and no timer ack (the library would confirm WAL it has merely received);
 * - back-pressure by pausing the socket while the pipeline is full (the library's own flow
 *   control awaits a promise per message, a cost on every row);
 * - keepalives answered by us with the *confirmed* watermark, never the received position;
 * - a fresh library instance per session, started at 0/0 so the server resumes from the slot's
 *   own confirmed_flush_lsn (never from a position we merely received).
 */
export class ReplicationStream {
  private readonly service: LogicalReplicationService;
  private confirmed: Lsn;
  private lastSent: Lsn = -1n;
  private statusTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private failure: OutboxdError | null = null;
  private settle: { resolve: () => void; reject: (e: OutboxdError) => void } | null = null;
  /** Settles when the session ends: resolves on stop(), rejects with the reason otherwise. */
  readonly ended: Promise<void>;
  /** Wall-clock ms of the last message or keepalive from the server. */
  lastActivityMs = Date.now();

  constructor(
    private readonly cfg: PostgresConfig,
    private readonly publication: string,
    private readonly wantMessages: boolean,
    private readonly handler: ChangeHandler,
    start: Lsn,
    private readonly log: Logger,
  ) {
    this.confirmed = start;
    this.service = new LogicalReplicationService(clientConfig(cfg), {
      acknowledge: { auto: false, timeoutSeconds: 0 },
      // The library's flow control awaits a promise per message; we pause the socket ourselves,
      // only when the pipeline is full, and keep the read path synchronous otherwise.
      flowControl: { enabled: false },
    });
    this.ended = new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // Nobody may be waiting on `ended` yet; it is still observed by whoever calls start().
    this.ended.catch(() => undefined);
  }

  /** Confirmed LSN as last reported to the server. */
  get confirmedLsn(): Lsn {
    return this.confirmed;
  }

  /** Back-pressure holds in force; the socket is paused while this is above 0. */
  private holds = 0;

  /** The replication socket (pg's Connection stream), to pause and resume reading. */
  private socket(): { pause(): void; resume(): void } | undefined {
    return (this.service as unknown as LibraryInternals)._connection?.stream;
  }

  /**
   * Stops reading WAL until `p` settles. Messages already parsed from the current socket chunk
   * still arrive (at most one chunk), so memory stays bounded by the pipeline's limits plus that.
   */
  private hold(p: Promise<void>): void {
    if (this.holds++ === 0) this.socket()?.pause();
    p.then(
      () => {
        if (--this.holds === 0 && !this.stopped) this.socket()?.resume();
      },
      (err: unknown) => this.fail(err),
    );
  }

  /** Starts streaming. Resolves once the server has started replication; rejects on failure. */
  async start(): Promise<void> {
    const plugin = new PgoutputPlugin({ protoVersion: 1, publicationNames: [this.publication], messages: this.wantMessages });
    passValuesAsText(plugin);
    this.service.on('data', (lsn: string, msg: DecodedMessage) => this.onData(lsn, msg));
    this.service.on('heartbeat', (lsn: string, _ts: number, shouldRespond: boolean) => this.onKeepalive(lsn, shouldRespond));
    this.service.on('error', (err: Error) => this.end(classifyPgError(err, 'replication stream')));
    const started = new Promise<void>((resolve) => this.service.once('start', () => resolve()));
    const subscribed = this.service.subscribe(plugin, this.cfg.slot, '0/0');
    subscribed.then(
      () => this.end(this.stopped ? null : classifyPgError(new Error('replication connection terminated'), 'replication stream')),
      (err: unknown) => this.end(classifyPgError(err, 'replication stream')),
    );
    await Promise.race([started, this.ended]);
    if (this.failure) throw this.failure;
    this.statusTimer = setInterval(() => this.tick(), this.cfg.statusIntervalMs);
    this.statusTimer.unref();
    this.sendStatus(false);
  }

  /**
   * Records that everything up to `lsn` is durably published and tells the server at once. The
   * pipeline calls this at most once per confirmed batch, so the cost is one 34-byte message per
   * batch, and a crash can only duplicate what was in flight.
   */
  confirm(lsn: Lsn): void {
    if (lsn <= this.confirmed) return;
    this.confirmed = lsn;
    this.sendStatus(false);
  }

  /** Sends the confirmed position now (before a graceful stop). */
  flushConfirm(): void {
    this.sendStatus(false);
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clearTimers();
    try {
      await this.service.stop();
    } catch (err) {
      this.log.debug({ err }, 'replication stop');
    }
    this.service.removeAllListeners();
    this.end(null);
  }

  /**
   * Every status interval: report the confirmed position and ask the server to answer at once
   * (ping). A connection that stays silent across several pings is dead even if TCP has not
   * noticed (a stalled network): end the session so the relay reconnects.
   */
  private tick(): void {
    const now = Date.now();
    // While we are not reading (back-pressure), the silence is ours, not the server's.
    if (this.holds > 0) this.lastActivityMs = now;
    const silentMs = now - this.lastActivityMs;
    const limitMs = Math.max(3 * this.cfg.statusIntervalMs, 10_000);
    if (silentMs > limitMs) {
      this.end(new PgConnectionError(`replication stream: no message from the server for ${Math.round(silentMs / 1000)} s; reconnecting`));
      return;
    }
    this.sendStatus(true);
  }

  private clearTimers(): void {
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.statusTimer = null;
  }

  private end(err: OutboxdError | null): void {
    if (!this.settle) return;
    const s = this.settle;
    this.settle = null;
    this.clearTimers();
    if (err && !this.stopped) {
      this.failure = err;
      s.reject(err);
      // Stop reading: nothing after a failure may be processed, and nothing unprocessed is confirmed.
      this.stopped = true;
      this.service.stop().catch(() => undefined);
    } else s.resolve();
  }

  /**
   * Sends a standby status update with write = flush = apply = the confirmed LSN.
   * Why `lsn - 1`: the library adds 1 to what it is given (it treats it as "last byte"), while
   * our LSN is already a commit's *end* (the first byte after it). Confirming end + 1 could tell
   * the server that a transaction whose commit record starts exactly at `end` is done.
   */
  private sendStatus(ping: boolean): void {
    if (this.stopped || this.confirmed <= 0n) return;
    this.lastSent = this.confirmed;
    this.service.acknowledge(formatLsn(this.confirmed - 1n), ping).catch((err: unknown) => this.log.debug({ err }, 'status update failed'));
  }

  private onKeepalive(lsnText: string, shouldRespond: boolean): void {
    this.lastActivityMs = Date.now();
    if (this.stopped) return;
    // Messages are handled synchronously in arrival order, so everything the server sent before
    // this keepalive has been handed to the handler; the handler decides whether it is settled.
    const next = this.handler.keepalive(parseLsn(lsnText));
    if (next !== null && next > this.confirmed) {
      this.confirmed = next;
      this.sendStatus(false);
      return;
    }
    if (shouldRespond || this.lastSent !== this.confirmed) this.sendStatus(false);
  }

  private onData(_lsn: string, msg: DecodedMessage): void {
    if (this.stopped) return;
    this.lastActivityMs = Date.now();
    try {
      const h = this.handler;
      switch (msg.tag) {
        case 'begin':
          h.begin(msg.xid, parseLsn(msg.commitLsn ?? '0/0'), Number(msg.commitTime / 1000n));
          return;
        case 'insert': {
          const p = h.insert(msg.relation, msg.new);
          if (p) this.hold(p);
          return;
        }
        case 'commit':
          h.commit(parseLsn(msg.commitEndLsn ?? '0/0'));
          return;
        case 'relation':
          h.relation(msg);
          return;
        case 'message': {
          const p = h.message(msg.prefix, msg.content, msg.transactional, parseLsn(msg.messageLsn ?? '0/0'));
          if (p) this.hold(p);
          return;
        }
        case 'update':
        case 'delete':
        case 'truncate':
          h.ignore(msg.tag);
          return;
        default:
          return;
      }
    } catch (err) {
      // Nothing after a failed message may be processed (or ever confirmed).
      this.fail(err);
    }
  }

  private fail(err: unknown): void {
    const e =
      err instanceof OutboxdError
        ? err
        : new OutboxdError('INTERNAL', `processing the replication stream: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    this.end(e);
  }
}

/** The subset of pgoutput messages we act on, as pg-logical-replication decodes them. */
type DecodedMessage =
  | { tag: 'begin'; commitLsn: string | null; commitTime: bigint; xid: number }
  | { tag: 'commit'; commitEndLsn: string | null }
  | ({ tag: 'relation' } & Relation)
  | { tag: 'insert'; relation: Relation; new: Record<string, string | null | undefined> }
  | { tag: 'message'; prefix: string; content: Uint8Array; transactional: boolean; messageLsn: string | null }
  | { tag: 'update' | 'delete' | 'truncate' | 'origin' | 'type' };

/**
 * Column values arrive as text; the library would run them through pg's global type parsers
 * (JSON.parse for jsonb, Date for timestamptz), which costs ~25% CPU and loses the payload's
 * exact bytes. We swap in an identity parser per RELATION instead of changing pg's global
 * parsers, which would affect every other pg client in the process.
 */
function passValuesAsText(plugin: PgoutputPlugin): void {
  const parser = (plugin as unknown as { parser?: ParserInternals }).parser;
  const original = parser?.readRelationColumn;
  if (!parser || typeof original !== 'function') {
    throw new OutboxdError('INTERNAL', 'pg-logical-replication internals changed (PgoutputParser.readRelationColumn); pin version 2.5.0');
  }
  parser.readRelationColumn = (reader: unknown) => {
    const col = original.call(parser, reader);
    col.parser = asText;
    return col;
  };
}
