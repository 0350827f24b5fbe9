import type pg from 'pg';
import type { PostgresConfig } from '../config/config.js';
import type { Logger } from '../observability/logger.js';
import { connectAdmin } from './connect.js';

/**
 * The admin connection (plain SQL: the leader lock, checks, heartbeats, lag). A pg.Client cannot
 * reconnect, so when it ends it is dropped, and the next `get()` opens a new one and runs
 * `onReopen` on it (the leader takes its lock again).
 */
export class AdminConnection {
  private current: pg.Client | null = null;
  private opening: Promise<pg.Client> | null = null;
  private closed = false;
  /** Runs on a connection opened to replace one that ended. */
  onReopen: ((client: pg.Client) => Promise<void>) | null = null;

  constructor(
    private readonly cfg: PostgresConfig,
    private readonly log: Logger,
  ) {}

  /** The open connection, opened first if there is none. Rejects with a classified error. */
  get(): Promise<pg.Client> {
    if (this.current) return Promise.resolve(this.current);
    this.opening ??= this.open().finally(() => {
      this.opening = null;
    });
    return this.opening;
  }

  private async open(): Promise<pg.Client> {
    const reopening = this.hadOne;
    const client = await connectAdmin(this.cfg);
    client.on('end', () => {
      if (this.current !== client) return;
      this.current = null;
      if (!this.closed) this.log.warn('admin connection to Postgres closed; reopening on next use');
    });
    this.current = client;
    this.hadOne = true;
    if (reopening && this.onReopen) await this.onReopen(client);
    return client;
  }

  private hadOne = false;

  /** Drops the connection (after a failed session: it may be broken). The next get() opens another. */
  async drop(): Promise<void> {
    const c = this.current;
    this.current = null;
    this.hadOne = false;
    await c?.end().catch(() => undefined);
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.drop();
  }
}
