import type { PostgresConfig } from '../config/config.js';
import type { Logger } from '../observability/logger.js';
import { type Metrics, setOneHot } from '../observability/metrics.js';
import type { AdminConnection } from './admin.js';
import { slotLag } from './slot.js';

/**
 * What the leader does beside streaming, on the admin connection: heartbeats (a transactional
 * logical message every `heartbeat.interval`, so the slot advances while the outbox is idle and
 * other tables write WAL) and polling the slot's lag, retained WAL and `wal_status` for the
 * metrics. A failed heartbeat or poll is only logged at debug: the stream decides the relay's
 * health.
 */
export class SlotMonitor {
  private timers: NodeJS.Timeout[] = [];

  constructor(
    private readonly cfg: PostgresConfig,
    private readonly admin: AdminConnection,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  start(): void {
    if (this.timers.length > 0) return;
    if (this.cfg.heartbeatIntervalMs > 0) this.every(this.cfg.heartbeatIntervalMs, () => this.heartbeat());
    void this.poll();
    this.every(this.cfg.lagPollIntervalMs, () => this.poll());
  }

  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
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
    } catch (err) {
      this.log.debug({ err }, 'lag poll failed');
    }
  }
}
