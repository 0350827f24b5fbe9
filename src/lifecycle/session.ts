import type { Watermark } from '../positions/watermark.js';
import type { Config } from '../config/config.js';
import type { SinkSession } from '../interfaces.js';
import { ConfigError, type OutboxdError, PoisonError, SlotBusyError, SlotError } from '../errors.js';
import { ZERO_LSN, formatLsn } from '../lsn.js';
import { Pruner } from './pruner.js';
import { ReshardGate } from './reshard.js';
import { recoverFromOutbox } from '../replay/recover.js';
import type { Liveness } from '../observability/liveness.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Ingest } from '../pipeline/ingest.js';
import type { Pipeline } from '../pipeline/pipeline.js';
import { retry, worthLogging } from '../retry.js';
import { AdminConnection } from '../source/admin.js';
import { LeaderLock } from '../postgres/leader.js';
import { SlotMonitor } from '../source/monitor.js';
import { classifyPgError } from '../postgres/pg-errors.js';
import { checkWalLevel, ensurePublication } from '../postgres/publication.js';
import { ensureSlot } from '../source/ensure-slot.js';
import { ReplicationStream } from '../source/stream.js';

/** What the source tells the relay about itself. */
export interface SourceEvents {
  /** standby: another instance leads; streaming: a session is open; reconnecting: retrying one. */
  onState(state: 'standby' | 'streaming' | 'reconnecting'): void;
  /** What start-up waits for right now (slot creation behind running transactions), or null. */
  onWaiting(what: string | null): void;
  /** A row the server cannot send (not convertible to UTF-8): nothing after it can be read. */
  onHalt(error: PoisonError): void;
  /** The progress watchdog (monitor.ts): the slot's confirmed position stands still, or moves again. */
  onStuck?(stuck: boolean, unchangedMs: number, detail: string): void;
  /**
   * Exactly-once: the sink takes each session before it streams, and reads where the broker's
   * copy of this source ends (its checkpoint) into the relay's PublishedUpTo, which decides what
   * the session skips. Absent for at-least-once sinks.
   */
  resumePoint?: ((session: SinkSession) => Promise<void>) | undefined;
}

/**
 * The Postgres side of the relay: one replication session after another on the slot, each
 * opened as the leader (the lock), after the checks and the slot's setup, and retried with
 * backoff when it fails. Everything a session reads goes to the Ingest; the watermark tells the
 * stream what to confirm.
 */
export class Sessions {
  private readonly admin: AdminConnection;
  /** The leader lock, on the admin connection: exactly-once asks it before fencing back (SinkSession.stillLeader). */
  private readonly lock: LeaderLock;
  private readonly monitor: SlotMonitor;
  /** Pruning and the confirmed epoch (lifecycle/pruner.ts), when configured: on the leader, while it streams. */
  private readonly pruner: Pruner | null;
  /** This slot's part in a reshard, if any. */
  private readonly gate: ReshardGate;
  private stream: ReplicationStream | null = null;

  constructor(
    private readonly cfg: Config,
    private readonly watermark: Watermark,
    private readonly ingest: Ingest,
    private readonly pipeline: Pipeline,
    private readonly liveness: Liveness,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly events: SourceEvents,
  ) {
    this.admin = new AdminConnection(cfg.postgres, log.child({ module: 'admin' }));
    this.lock = new LeaderLock(cfg.postgres.slot, () => this.admin.get(), cfg.postgres.statementTimeoutMs);
    // The lock lives on the admin connection. If that one ends while we stream, the slot stays
    // ours (Postgres refuses a second consumer of an active slot); take the lock back anyway.
    this.admin.onReopen = async (client) => {
      if (!(await this.lock.tryTake(client))) {
        this.log.warn('leader lock is held elsewhere after an admin reconnect; the slot stays ours while the stream lives');
      }
    };
    this.monitor = new SlotMonitor(cfg.postgres, this.admin, metrics, log.child({ module: 'monitor' }), (stuck, ms, detail) =>
      this.events.onStuck?.(stuck, ms, detail),
    );
    this.pruner = Pruner.wanted(cfg) ? new Pruner(cfg, watermark, metrics, log.child({ module: 'prune' })) : null;
    this.gate = new ReshardGate(cfg, () => this.admin.get(), pipeline, metrics, log.child({ module: 'reshard' }));
    ingest.gate = this.gate;
  }

  /**
   * Runs sessions until `signal` aborts (resolves), a row halts the stream (resolves, after
   * onHalt), or an error retrying cannot fix (rejects: a lost slot, a config error, refused
   * credentials).
   */
  async run(signal: AbortSignal): Promise<void> {
    try {
      await retry((_attempt, progress) => this.session(signal, progress), {
        backoff: this.cfg.postgres.reconnect,
        signal,
        isRetriable: (err) => {
          const e = classifyPgError(err, 'postgres');
          return e.retriable && !(e instanceof SlotError) && !(e instanceof ConfigError);
        },
        onRetry: (err, attempt, waitMs) => {
          const e = classifyPgError(err, 'postgres');
          this.metrics.connectionState.set({ target: 'postgres' }, 0);
          this.metrics.reconnects.inc({ target: 'postgres' });
          if (e instanceof SlotBusyError) {
            // Another instance streams from the slot without holding our lock.
            this.events.onState('standby');
            if (attempt === 1) this.log.info({ slot: this.cfg.postgres.slot }, 'slot is held by another instance; waiting as standby');
            return;
          }
          this.events.onState('reconnecting');
          if (worthLogging(attempt)) this.log.warn({ err: e, attempt, retryInMs: waitMs }, 'replication interrupted, reconnecting');
          void this.admin.drop();
        },
      });
    } catch (err) {
      if (signal.aborted) return;
      const e = classifyPgError(err, 'postgres');
      if (!(e instanceof PoisonError)) throw e;
      this.metrics.poisonMessages.inc({ reason: e.reason });
      this.log.error(
        { err: e, reason: e.reason, where: e.where },
        'poison message: halting; Postgres cannot send a text value as UTF-8 (see docs/runbook.md#poison-messages)',
      );
      this.events.onHalt(e);
      // Heartbeats and the slot metrics go on: the operator watches them while halted.
      this.monitor.start();
    }
  }

  /** One session: lead, check, set up, stream until the stream ends. */
  private async session(signal: AbortSignal, progress: () => void): Promise<void> {
    const pgc = this.cfg.postgres;
    const admin = await this.admin.get();
    if (!(await this.lock.tryTake(admin))) {
      this.events.onState('standby');
      this.log.info({ slot: pgc.slot }, 'another instance leads this slot; waiting as standby');
      await this.lock.await(admin, pgc.statementTimeoutMs, signal);
      this.log.info({ slot: pgc.slot }, 'took over as leader');
    }
    // Each step's own timeouts (statement, lock, slot creation) end it well within its bound:
    // only a hang that none of them covers makes /livez fail.
    await this.liveness.step('checking Postgres', 3 * pgc.statementTimeoutMs, async () => {
      await checkWalLevel(admin);
      await ensurePublication(admin, this.cfg);
    });
    const { slot, created, recovery } = await this.liveness.step(
      'creating or checking the replication slot',
      pgc.slotCreateTimeoutMs + 3 * pgc.statementTimeoutMs,
      () =>
        ensureSlot(admin, pgc, (blockers, waitedMs) => {
          const oldest = blockers[0];
          this.events.onWaiting(
            `creating replication slot ${pgc.slot}: waiting ${Math.round(waitedMs / 1000)} s for ${blockers.length} running transaction(s) to end${oldest ? ` (oldest: pid ${oldest.pid}, ${oldest.ageSeconds} s)` : ''}`,
          );
          this.log.warn({ slot: pgc.slot, waitedMs, blockers }, 'creating the replication slot waits for running transactions to end');
        }).finally(() => this.events.onWaiting(null)),
    );
    if (created) this.log.info({ slot: slot.name, lsn: formatLsn(slot.confirmedFlushLsn ?? 0n) }, 'created replication slot');
    if (recovery) {
      // postgres.onLostSlot: recover-from-outbox. Before the new slot streams, what the lost one
      // may not have delivered is published again from the table, in the snapshot the new slot
      // exported (replay/recover.ts).
      this.events.onWaiting(
        `recovering from a lost replication slot: publishing again the retained rows from transaction ${recovery.recovery.fromXid} on`,
      );
      try {
        const outcome = await recoverFromOutbox(this.cfg, admin, recovery, this.metrics, this.log.child({ module: 'recovery' }), signal);
        if (outcome !== 'done') return;
      } finally {
        this.events.onWaiting(null);
      }
    }
    // A reshard: a new shard waits here until every old shard has retired (lifecycle/reshard.ts).
    if (!(await this.gate.prepare(signal, (why) => this.events.onWaiting(why)))) return;
    // The new session re-reads from the slot. Whatever the last session left in flight is
    // published first, so the watermark's bookkeeping can start over cleanly.
    if (!(await this.pipeline.whenIdle(signal))) return;
    const start = slot.confirmedFlushLsn ?? ZERO_LSN;
    this.ingest.resetSession();
    const stream = new ReplicationStream(
      pgc,
      pgc.publication,
      this.cfg.outbox.messages.enabled || pgc.heartbeatIntervalMs > 0,
      this.ingest,
      this.watermark,
      this.log.child({ module: 'source' }),
    );
    this.stream = stream;
    try {
      await this.liveness.step(
        'starting replication',
        2 * pgc.connectTimeoutMs + pgc.statementTimeoutMs + this.resumeBoundMs(),
        async () => {
          const reached = await stream.open();
          if (reached === null) return;
          // Every position of this session is of the server the stream reached: the watermark
          // starts from the slot's position there, never from an earlier session's
          // (Watermark.reset), and the exactly-once checkpoint is judged against this server's
          // timeline (PublishedUpTo).
          this.watermark.reset(reached.slotLsn ?? start, reached.source);
          await this.events.resumePoint?.({ source: reached.source, stillLeader: () => this.lock.held() });
          await stream.start();
        },
      );
      this.metrics.connectionState.set({ target: 'postgres' }, 1);
      this.log.info({ slot: pgc.slot, from: formatLsn(this.watermark.lsn), timeline: this.watermark.origin?.timeline }, 'streaming');
      progress();
      this.events.onState('streaming');
      this.monitor.start();
      this.pruner?.start();
      const stop = () => void stream.stop();
      signal.addEventListener('abort', stop, { once: true });
      try {
        await stream.ended;
      } finally {
        signal.removeEventListener('abort', stop);
      }
    } catch (err) {
      // The resume point may have failed with the connection still open.
      await stream.stop();
      throw classifyPgError(err, 'replication stream') as OutboxdError;
    } finally {
      this.monitor.stop();
      await this.pruner?.stop();
      this.stream = null;
      this.ingest.resetSession();
    }
  }

  /** How long reading the exactly-once checkpoint may take: another producer's open transaction may hold it. */
  private resumeBoundMs(): number {
    const sink = this.cfg.sink;
    if (sink.type !== 'kafka' || sink.kafka.delivery !== 'exactly-once') return 0;
    return sink.kafka.transactionTimeoutMs + 3 * sink.kafka.requestTimeoutMs;
  }

  /**
   * Before a graceful stop: tells the server the final watermark and waits for its answer, so the
   * confirmed position is in pg_replication_slots when the process exits.
   */
  async flush(): Promise<void> {
    await this.stream?.flush();
  }

  async close(): Promise<void> {
    this.monitor.stop();
    await this.pruner?.stop();
    await this.stream?.stop();
    await this.admin.close();
  }
}
