import { LogicalReplicationService } from 'pg-logical-replication';
import type { Client } from 'pg';
import type { PostgresConfig } from '../config/schema.js';
import { OutboxdError, PgConnectionError } from '../errors.js';
import { type Lsn, lsnFromWords } from '../lsn.js';
import type { Logger } from '../observability/logger.js';
import { type CoalescedSocket, coalesceReads } from './coalesce.js';
import { PG_EPOCH_MS, PgoutputDecoder, type PgoutputHandler, type TableInterest } from './pgoutput.js';
import { classifyPgError, clientConfig } from './postgres.js';

/**
 * Receives decoded changes in WAL order (see PgoutputHandler), and the server's keepalives.
 */
export interface ChangeHandler<T extends TableInterest = TableInterest> extends PgoutputHandler<T> {
  /**
   * The server says it has sent everything before `lsn` (a keepalive), and every change received
   * before it has been handed to this handler. Returns the LSN that may now be confirmed, if any.
   */
  keepalive(lsn: Lsn): Lsn | null;
}

/** What outboxd uses of pg's Connection (internal to pg, stable across pg 8; checked at start). */
interface PgConnection {
  stream: CoalescedSocket & { pause(): void; resume(): void };
  sendCopyFromChunk(chunk: Buffer): void;
  on(event: 'copyData', listener: (msg: { chunk: Buffer }) => void): void;
  listeners(event: string): unknown[];
  removeListener(event: string, listener: (...args: unknown[]) => void): void;
}

/**
 * One replication session on the slot. pg-logical-replication opens the replication connection,
 * starts replication and stops it; outboxd reads the CopyData stream itself (docs/adr/0007),
 * with the settings the project's field notes on pg-logical-replication 2.5.0 show are needed
 * for at-least-once (docs/adr/0002):
 * - no auto-ack and no timer ack (the library would confirm WAL it has merely received);
 * - every message decoded and handled synchronously, in arrival order, by our pgoutput decoder;
 *   back-pressure pauses the socket while the pipeline is full (the library's flow control
 *   would await a promise per message);
 * - standby status updates written by us, always with the *confirmed* watermark, never the
 *   received position;
 * - a fresh library instance per session, started at 0/0 so the server resumes from the slot's
 *   own confirmed_flush_lsn (never from a position we merely received).
 */
export class ReplicationStream {
  private readonly service: LogicalReplicationService;
  private readonly decoder: PgoutputDecoder;
  private connection: PgConnection | null = null;
  private confirmed: Lsn;
  private lastSent: Lsn = -1n;
  private statusTimer: NodeJS.Timeout | null = null;
  private stopped = false;
  private failure: OutboxdError | null = null;
  private settle: { resolve: () => void; reject: (e: OutboxdError) => void } | null = null;
  /** Settles when the session ends: resolves on stop(), rejects with the reason otherwise. */
  readonly ended: Promise<void>;
  /** Messages and keepalives received; the status timer turns a change into lastActivityMs. */
  private received = 0;
  private receivedAtLastTick = 0;
  /** Wall-clock ms when the server was last heard from (to the status interval's precision). */
  lastActivityMs = Date.now();
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
    start: Lsn,
    private readonly log: Logger,
  ) {
    this.confirmed = start;
    this.decoder = new PgoutputDecoder(handler);
    this.service = new LogicalReplicationService(clientConfig(cfg), {
      acknowledge: { auto: false, timeoutSeconds: 0 },
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

  /** Starts streaming. Resolves once the server has started replication; rejects on failure. */
  async start(): Promise<void> {
    this.service.on('error', (err: Error) => this.end(classifyPgError(err, 'replication stream')));
    const started = new Promise<void>((resolve) => this.service.once('start', () => resolve()));
    const subscribed = this.service.subscribe(this.plugin(), this.cfg.slot, '0/0');
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
   * The output plugin the library starts replication with. Its `start` is handed the replication
   * client after the library has attached its own CopyData listener and before START_REPLICATION:
   * we swap that listener for ours there, so the library never parses or emits a message.
   */
  private plugin(): Parameters<LogicalReplicationService['subscribe']>[0] {
    const options = [
      "proto_version '1'",
      `publication_names '${this.publication.replaceAll("'", "''")}'`,
      `messages '${this.wantMessages}'`,
    ].join(', ');
    return {
      options: {},
      name: 'pgoutput',
      parse: () => {
        throw new OutboxdError('INTERNAL', 'pg-logical-replication parsed a message outboxd reads itself');
      },
      start: (client: Client, slot: string, lsn: string) => {
        this.connection = takeOverCopyData(client, (chunk) => this.onCopyData(chunk));
        if (this.cfg.readCoalesceMs > 0) {
          coalesceReads(this.connection.stream, this.cfg.readCoalesceMs, (waiting) => {
            this.napping = waiting;
            this.updateReading();
          });
        }
        return rawTextInSqlAscii(client).then(() =>
          client.query(`START_REPLICATION SLOT "${slot.replaceAll('"', '""')}" LOGICAL ${lsn} (${options})`),
        );
      },
    };
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
    if (this.holds > 0 || this.received !== this.receivedAtLastTick) this.lastActivityMs = now;
    this.receivedAtLastTick = this.received;
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
   * Sends a standby status update with write = flush = apply = the confirmed LSN: the end of the
   * last transaction whose every message the broker confirmed (docs/adr/0002).
   */
  private sendStatus(ping: boolean): void {
    const conn = this.connection;
    if (this.stopped || conn === null || this.confirmed <= 0n) return;
    this.lastSent = this.confirmed;
    try {
      conn.sendCopyFromChunk(standbyStatusUpdate(this.confirmed, ping));
    } catch (err) {
      this.log.debug({ err }, 'status update failed');
    }
  }

  /** A CopyData message from the server: XLogData ('w') or a primary keepalive ('k'). */
  private onCopyData(chunk: Buffer): void {
    if (this.stopped) return;
    this.received++;
    try {
      if (chunk[0] === 0x77) {
        // 'w', Int64 start, Int64 end, Int64 send time, then one pgoutput message.
        const p = this.decoder.decode(chunk, 25, chunk.length);
        if (p !== undefined) this.hold(p);
      } else if (chunk[0] === 0x6b && chunk.length >= 18) {
        // 'k', Int64 end of WAL, Int64 send time, Byte reply requested.
        this.onKeepalive(lsnFromWords(chunk.readUInt32BE(1), chunk.readUInt32BE(5)), chunk[17] !== 0);
      } else {
        throw new OutboxdError('PG_PROTOCOL', `replication stream: unknown CopyData message 0x${(chunk[0] ?? 0).toString(16)}`);
      }
    } catch (err) {
      // Nothing after a failed message may be processed (or ever confirmed).
      this.fail(err);
    }
  }

  private onKeepalive(lsn: Lsn, shouldRespond: boolean): void {
    // Messages are handled synchronously in arrival order, so everything the server sent before
    // this keepalive has been handed to the handler; the handler decides whether it is settled.
    const next = this.handler.keepalive(lsn);
    if (next !== null && next > this.confirmed) {
      this.confirmed = next;
      this.sendStatus(false);
      return;
    }
    if (shouldRespond || this.lastSent !== this.confirmed) this.sendStatus(false);
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
 * Replaces the library's CopyData listener on the replication client's connection with ours.
 * Fails loudly if pg or pg-logical-replication no longer look the way this relies on.
 */
function takeOverCopyData(client: Client, listener: (chunk: Buffer) => void): PgConnection {
  const conn = (client as unknown as { connection?: Partial<PgConnection> }).connection;
  // pg's Client listens too (a no-op for a replication query); the library's is the other one.
  const library = conn?.listeners?.('copyData').filter((l) => (l as { name?: string }).name !== 'bound _handleCopyData');
  if (
    !conn ||
    typeof conn.sendCopyFromChunk !== 'function' ||
    typeof conn.stream?.pause !== 'function' ||
    typeof conn.removeListener !== 'function' ||
    library?.length !== 1
  ) {
    throw new OutboxdError(
      'INTERNAL',
      'pg / pg-logical-replication internals changed (replication connection); pin pg-logical-replication 2.5.0',
    );
  }
  const c = conn as PgConnection;
  c.removeListener('copyData', library[0] as (...args: unknown[]) => void);
  c.on('copyData', (msg) => listener(msg.chunk));
  return c;
}

/**
 * In a SQL_ASCII database a text column may hold any bytes. pg asks for client_encoding UTF8, so
 * the walsender would convert each value, and one that is not UTF-8 would fail the whole stream
 * (22021) under any poison policy, forever. With the client encoding SQL_ASCII the bytes arrive
 * as stored, and the decoder makes a value that is not UTF-8 poison (bad_encoding) like any other
 * poison row. Any other server encoding converts to UTF-8 losslessly and is left alone.
 */
async function rawTextInSqlAscii(client: Client): Promise<void> {
  const { rows } = await client.query<{ server_encoding: string }>('SHOW server_encoding');
  if (rows[0]?.server_encoding === 'SQL_ASCII') await client.query("SET client_encoding = 'SQL_ASCII'");
}

/**
 * Standby status update ('r'): Int64 written, flushed and applied LSN (all the confirmed one:
 * outboxd "applies" a transaction when the broker has confirmed it), Int64 client time in
 * microseconds since 2000-01-01, Byte 1 to ask the server to reply at once.
 */
export function standbyStatusUpdate(confirmed: Lsn, ping: boolean): Buffer {
  const b = Buffer.allocUnsafe(34);
  b[0] = 0x72;
  b.writeBigUInt64BE(confirmed, 1);
  b.writeBigUInt64BE(confirmed, 9);
  b.writeBigUInt64BE(confirmed, 17);
  b.writeBigInt64BE(BigInt(Date.now() - PG_EPOCH_MS) * 1000n, 25);
  b[33] = ping ? 1 : 0;
  return b;
}
