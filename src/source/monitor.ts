import type { PostgresConfig } from '../config/config.js';
import type { Logger } from '../observability/logger.js';
import { type Metrics, setOneHot } from '../observability/metrics.js';
import type { AdminConnection } from './admin.js';
import { formatLsn, type Lsn } from '../lsn.js';
import { slotLag } from './slot.js';

/**
 * What the leader does beside streaming, on the admin connection: heartbeats (a transactional
 * logical message every `heartbeat.interval`, so the slot advances while the outbox is idle and
 * other tables write WAL) and polling the slot's lag, retained WAL and `wal_status` for the
 * metrics. A failed heartbeat or poll is only logged at debug: the stream decides the relay's
 * health.
 *
 * The poll is also the progress watchdog: the slot's confirmed position, as the server stores it,
 * must move while the server's WAL is ahead of it. A relay that streams, publishes and reports
 * itself fine while that position stands still (status updates lost on the way, a confirm that
 * never comes, a bug) is stuck, which no lag threshold tells apart from a slow relay. After
 * `progressTimeout` of that, `onStuck(true)`; when it moves again, `onStuck(false)`.
 */
export class SlotMonitor {
  private timers: NodeJS.Timeout[] = [];

  constructor(
    private readonly cfg: PostgresConfig,
    private readonly admin: AdminConnection,
    private readonly metrics: Metrics,
    private readonly log: Logger,
    private readonly onStuck: (stuck: boolean, unchangedMs: number, detail: string) => void = () => undefined,
  ) {}

  /** The confirmed position last seen, and when it last moved (or was caught up). */
  private confirmed: Lsn | null = null;
  private movedAt = 0;
  private stuck = false;

  start(): void {
    if (this.timers.length > 0) return;
    if (this.cfg.heartbeatIntervalMs > 0) this.every(this.cfg.heartbeatIntervalMs, () => this.heartbeat());
    void this.poll();
    this.every(this.cfg.lagPollIntervalMs, () => this.poll());
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    // Not leading: nothing to watch. The next leadership starts the clock again.
    this.confirmed = null;
    this.metrics.confirmedUnchanged.set(0);
    this.setStuck(false, 0, '');
  }

  private every(ms: number, fn: () => Promise<void>): void {
    const t = setInterval(() => void fn(), ms);
    t.unref();
    this.timers.push(t);
  }

  private async heartbeat(): Promise<void> {
    try {
      const client = await this.admin.get();
      await client.query('SELECT pg_logical_emit_message(true, $1, $2)', [this.cfg.heartbeatPrefix, new Date().toISOString()]);
      this.metrics.heartbeats.inc();
    } catch (err) {
      this.log.debug({ err }, 'heartbeat failed');
    }
  }

  private async poll(): Promise<void> {
    try {
      const lag = await slotLag(await this.admin.get(), this.cfg.slot);
      if (!lag) return;
      this.metrics.replicationLag.set(lag.lagBytes);
      this.metrics.retainedWal.set(lag.retainedBytes);
      if (lag.walStatus) setOneHot(this.metrics.slotWalStatus, 'status', lag.walStatus, ['reserved', 'extended', 'unreserved', 'lost']);
      this.watch(lag.confirmedFlushLsn, lag.lagBytes);
    } catch (err) {
      this.log.debug({ err }, 'lag poll failed');
    }
  }

  /** One reading of the slot (exported for the unit test): its confirmed position and how far the WAL is ahead. */
  watch(confirmed: Lsn | null, aheadBytes: number, now = Date.now()): void {
    if (confirmed === null) return;
    if (this.confirmed === null || confirmed !== this.confirmed || aheadBytes <= 0) {
      this.confirmed = confirmed;
      this.movedAt = now;
    }
    const unchangedMs = now - this.movedAt;
    this.metrics.confirmedUnchanged.set(unchangedMs / 1000);
    const limit = this.cfg.progressTimeoutMs;
    const detail = `the slot's confirmed position has stayed at ${formatLsn(confirmed)} for ${Math.round(unchangedMs / 1000)} s while the server's WAL is ${aheadBytes} bytes ahead of it (postgres.progressTimeout ${limit / 1000} s)`;
    this.setStuck(limit > 0 && unchangedMs >= limit, unchangedMs, detail);
  }

  private setStuck(stuck: boolean, unchangedMs: number, detail: string): void {
    if (stuck === this.stuck) {
      if (stuck) this.onStuck(true, unchangedMs, detail);
      return;
    }
    this.stuck = stuck;
    this.onStuck(stuck, unchangedMs, detail);
  }
}
