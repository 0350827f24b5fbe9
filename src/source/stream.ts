import type pg from 'pg';
import type { Watermark } from '../positions/watermark.js';
import type { PostgresConfig } from '../config/config.js';
import { OutboxdError, PgConnectionError } from '../errors.js';
import type { SourceIdentity } from '../interfaces.js';
import { type Lsn, lsnFromWords } from '../lsn.js';
import type { Logger } from '../observability/logger.js';
import { coalesceReads } from './coalesce.js';
import { connectReplication, hostOf } from './connect.js';
import { identifySource, slotPosition } from './identity.js';
import { classifyPgError } from '../postgres/pg-errors.js';
import { withTimeout } from '../retry.js';
import { PgoutputDecoder, type PgoutputHandler, type TableInterest } from './pgoutput.js';
import { type CopyConnection, StartReplication, standbyStatusUpdate } from './replication-protocol.js';

/**
 * Receives decoded changes in WAL order (see PgoutputHandler), and the server's keepalives.
 */
export interface ChangeHandler<T extends TableInterest = TableInterest> extends PgoutputHandler<T> {
  /**
   * The server says it has sent everything before `lsn` (a keepalive), and every change received
   * before it has been handed to this handler. The handler moves the watermark if it may.
   */
  keepalive(lsn: Lsn): void;
}

/** What a replication connection reaches (ReplicationStream.open). */
export interface Reached {
  readonly source: SourceIdentity;
  /** The slot's confirmed position on that server, or null when it has none. */
  readonly slotLsn: Lsn | null;
}

/**
 * One replication session on the slot, on a connection of its own (`replication: 'database'`),
 * with the settings the field notes on logical replication show are needed for at-least-once
 * (docs/adr/0002, 0007, 0008):
 * - started at 0/0, so the server resumes from the slot's own confirmed_flush_lsn, never from a
 *   position we merely received;
 * - every message decoded and handled synchronously, in arrival order (pgoutput.ts); back-pressure
 *   pauses the socket while the pipeline is full;
 * - standby status updates written by us, always with the watermark (the *confirmed* position),
 *   whenever it moves, and every `statusInterval` as a ping.
 */
export class ReplicationStream {
  private readonly decoder: PgoutputDecoder;
  /** The replication connection, once start() opened it. */
  private client: pg.Client | null = null;
  private connection: CopyConnection | null = null;
  private lastSent: Lsn = -1n;
  private statusQueued = false;
  private statusTimer: NodeJS.Timeout | null = null;
  private unsubscribe: () => void = () => undefined;
  private stopped = false;
  private settle: { resolve: () => void; reject: (e: OutboxdError) => void } | null = null;
  /** Settles when the session ends: resolves on stop(), rejects with the reason otherwise. */
  readonly ended: Promise<void>;
  /** Messages and keepalives received; the status timer turns a change into lastActivityMs. */
  private received = 0;
  private receivedAtLastTick = 0;
  private lastActivityMs = Date.now();
  /** Wakes flush(): the next message from the server after a status update that asked for one. */
  private replied: (() => void) | null = null;
  /** Back-pressure holds in force; the socket is paused while this is above 0. */
  private holds = 0;
  /** A read-coalescing pause is in progress (see coalesce.ts). */
  private napping = false;
  private reading = true;

  constructor(
    private readonly cfg: PostgresConfig,
    private readonly publication: string,
    private readonly wantMessages: boolean,
    private readonly handler: ChangeHandler,
    private readonly watermark: Watermark,
    private readonly log: Logger,
  ) {
    this.decoder = new PgoutputDecoder(handler);
    this.ended = new Promise<void>((resolve, reject) => {
      this.settle = { resolve, reject };
    });
    // Nobody may be waiting on `ended` yet; it is still observed by whoever calls start().
    this.ended.catch(() => undefined);
  }

  /**
   * Connects, and says what this connection reaches: the database, its server's timeline and
   * history (identity.ts), and the slot's confirmed position there (null for none). The session
   * starts its positions from these before it calls start(). Null when stopped meanwhile; rejects
   * on failure.
   */
  async open(): Promise<Reached | null> {
    let client: pg.Client;
    try {
      // The host is chosen as the admin connection's was (postgres.url's order and
      // target_session_attrs), so after a promotion both go to the new primary. Its socket never
      // holds a value too large to publish (docs/adr/0015).
      client = await connectReplication(this.cfg, this.handler.maxValueBytes);
    } catch (err) {
      this.end(classifyPgError(err, 'starting replication'));
      await this.ended;
      return null;
    }
    if (this.stopped) {
      await client.end().catch(() => undefined);
      return null;
    }
    this.client = client;
    if (this.cfg.hosts.length > 1) this.log.info({ host: hostOf(client) }, 'replication connection opened');
    client.on('error', (err: Error) => this.end(classifyPgError(err, 'replication stream')));
    client.on('end', () => this.end(this.stopped ? null : new PgConnectionError('replication stream: connection terminated')));
    try {
      await rawTextInSqlAscii(client);
      const source = await identifySource(client, this.log);
      return { source, slotLsn: await slotPosition(client, this.cfg.slot) };
    } catch (err) {
      this.end(classifyPgError(err, 'starting replication'));
      await this.ended;
      return null;
    }
  }

  /** Starts streaming on the connection open() made. Resolves once the server has started replication; rejects on failure. */
  async start(): Promise<void> {
    const client = this.client;
    if (client === null || this.stopped) return this.ended;
    const started = new Promise<void>((resolve) => {
      const query = new StartReplication(this.command(), {
        started: (connection) => {
          this.connection = connection;
          if (this.cfg.readCoalesceMs > 0) {
            coalesceReads(connection.stream, this.cfg.readCoalesceMs, (waiting) => {
              this.napping = waiting;
              this.updateReading();
            });
          }
          resolve();
        },
        copyData: (chunk) => this.onCopyData(chunk),
        end: (err) =>
          this.end(
            err === null
              ? this.stopped
                ? null
                : new PgConnectionError('replication stream: the server ended replication')
              : classifyPgError(err, 'replication stream'),
          ),
      });
      // A Submittable: pg calls its submit() and handlers, and returns it (not a promise).
      client.query(query as unknown as pg.QueryConfig);
    });
    await Promise.race([started, this.ended]);
    this.unsubscribe = this.watermark.onMove(() => this.statusSoon());
    this.statusTimer = setInterval(() => this.tick(), this.cfg.statusIntervalMs);
    this.statusTimer.unref();
    this.sendStatus({ force: true });
  }

  private command(): string {
    const options = [
      "proto_version '1'",
      `publication_names '${this.publication.replaceAll("'", "''")}'`,
      `messages '${this.wantMessages}'`,
    ].join(', ');
    return `START_REPLICATION SLOT "${this.cfg.slot.replaceAll('"', '""')}" LOGICAL 0/0 (${options})`;
  }

  /**
   * Stops reading WAL until `p` settles. Messages already framed from the current socket chunk
   * still arrive (at most one chunk), so memory stays bounded by the pipeline's limits plus that.
   */
  private hold(p: Promise<void>): void {
    this.holds++;
    this.updateReading();
    p.then(
      () => {
        this.holds--;
        this.updateReading();
      },
      (err: unknown) => this.fail(err),
    );
  }

  /** Pauses or resumes the socket: it reads while nothing holds it and no coalescing wait runs. */
  private updateReading(): void {
    const want = this.holds === 0 && !this.napping && !this.stopped;
    if (want === this.reading || this.connection === null) return;
    this.reading = want;
    if (want) this.connection.stream.resume();
    else this.connection.stream.pause();
  }

  /**
   * Sends the confirmed position with a reply requested, and resolves once the server answered
   * (it processes messages in order, so its answer means it has the position), or after
   * `timeoutMs`. Before a graceful stop, so the stop is visible in pg_replication_slots.
   */
  async flush(timeoutMs = 2_000): Promise<void> {
    if (this.stopped || this.connection === null) return;
    const answered = new Promise<void>((resolve) => {
      this.replied = resolve;
    });
    this.sendStatus({ force: true, ping: true });
    await withTimeout(answered, timeoutMs, () => undefined);
    this.replied = null;
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.clearTimers();
    await this.client?.end().catch((err: unknown) => this.log.debug({ err }, 'replication stop'));
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
    if (this.holds > 0 || this.received !== this.receivedAtLastTick) this.lastActivityMs = now;
    this.receivedAtLastTick = this.received;
    const silentMs = now - this.lastActivityMs;
    const limitMs = Math.max(3 * this.cfg.statusIntervalMs, 10_000);
    if (silentMs > limitMs) {
      this.end(new PgConnectionError(`replication stream: no message from the server for ${Math.round(silentMs / 1000)} s; reconnecting`));
      return;
    }
    this.sendStatus({ force: true, ping: true });
  }

  private clearTimers(): void {
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.statusTimer = null;
    this.unsubscribe();
  }

  private end(err: OutboxdError | null): void {
    if (!this.settle) return;
    const s = this.settle;
    this.settle = null;
    this.clearTimers();
    this.replied?.();
    if (err && !this.stopped) {
      s.reject(err);
      // Stop reading: nothing after a failure may be processed, and nothing unprocessed is confirmed.
      this.stopped = true;
      this.client?.end().catch(() => undefined);
    } else s.resolve();
  }

  /** The watermark moved: tell the server once the current burst of confirms is settled. */
  private statusSoon(): void {
    if (this.statusQueued) return;
    this.statusQueued = true;
    queueMicrotask(() => {
      this.statusQueued = false;
      this.sendStatus({});
    });
  }

  /**
   * Sends a standby status update with write = flush = apply = the watermark: the end of the
   * last transaction whose every message the broker confirmed (docs/adr/0002). Unless `force`d,
   * only when the watermark moved since the last one; `ping` asks the server to answer at once.
   */
  private sendStatus(opts: { force?: boolean; ping?: boolean }): void {
    const conn = this.connection;
    const lsn = this.watermark.lsn;
    if (this.stopped || conn === null || lsn <= 0n || (!opts.force && lsn === this.lastSent)) return;
    this.lastSent = lsn;
    try {
      conn.sendCopyFromChunk(standbyStatusUpdate(lsn, opts.ping === true));
    } catch (err) {
      this.log.debug({ err }, 'status update failed');
    }
  }

  /** A CopyData message from the server: XLogData ('w') or a primary keepalive ('k'). */
  private onCopyData(chunk: Buffer): void {
    if (this.stopped) return;
    this.received++;
    this.replied?.();
    try {
      if (chunk[0] === 0x77) {
        // 'w', Int64 start, Int64 end, Int64 send time, then one pgoutput message.
        const p = this.decoder.decode(chunk, 25, chunk.length);
        if (p !== undefined) this.hold(p);
      } else if (chunk[0] === 0x6b && chunk.length >= 18) {
        // 'k', Int64 end of WAL, Int64 send time, Byte reply requested. Messages are handled
        // synchronously in arrival order, so everything the server sent before this keepalive
        // has been handed to the handler; the handler decides whether it is settled.
        this.handler.keepalive(lsnFromWords(chunk.readUInt32BE(1), chunk.readUInt32BE(5)));
        if (chunk[17] !== 0) this.sendStatus({ force: true });
      } else {
        throw new OutboxdError('PG_PROTOCOL', `replication stream: unknown CopyData message 0x${(chunk[0] ?? 0).toString(16)}`);
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

/**
 * In a SQL_ASCII database a text column may hold any bytes. pg asks for client_encoding UTF8, so
 * the walsender would convert each value, and one that is not UTF-8 would fail the whole stream
 * (22021) under any poison policy, forever. With the client encoding SQL_ASCII the bytes arrive
 * as stored, and the decoder makes a value that is not UTF-8 poison (bad_encoding) like any other
 * poison row. Any other server encoding converts to UTF-8 losslessly and is left alone.
 */
async function rawTextInSqlAscii(client: pg.Client): Promise<void> {
  const { rows } = await client.query<{ server_encoding: string }>('SHOW server_encoding');
  if (rows[0]?.server_encoding === 'SQL_ASCII') await client.query("SET client_encoding = 'SQL_ASCII'");
}
