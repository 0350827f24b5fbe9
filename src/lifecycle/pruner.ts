import type pg from 'pg';
import { sameOrigin } from '../positions/origin.js';
import type { Config, Shard, TableConfig } from '../config/config.js';
import type { Origin } from '../interfaces.js';
import { quoteIdent } from '../config/config.js';
import { type Lsn, formatLsn } from '../lsn.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { connectAdmin } from '../source/connect.js';
import { walInsertPoint } from '../source/identity.js';
import { updateMarker, withEpoch } from '../postgres/marker.js';
import { type Floor, describeFloor, readFloor } from '../postgres/prune-floor.js';
import { PartitionKeeper } from '../postgres/prune-partitions.js';
import { bounded, deleteBatchSql, leavesOf } from '../postgres/prune-tables.js';

/**
 * PRUNING, AND THE CONFIRMED EPOCH (docs/adr/0011). Deletes outbox rows that the broker has
 * confirmed and that are older than `outbox.prune.retain`, and nothing else.
 *
 * A row does not carry its commit LSN, so "confirmed" is decided by epochs:
 * 1. An epoch starts: X0 = the xmin of a fresh snapshot (every transaction below it has ended),
 *    then, in a later statement, W0 = the WAL insert position. A committed transaction below X0
 *    wrote its commit record before the snapshot, so before W0.
 * 2. When the watermark (the relay's confirmed position) reaches W0, every outbox transaction
 *    below X0 is confirmed (or settled as poison).
 * 3. X0 goes into the lost-slot marker as this slot's confirmed epoch first (lost-slot recovery
 *    of this slot publishes again the rows at or after it). Then, in each outbox table, the rows
 *    older than `retain` and below the prune floor (prune-floor.ts: the smallest epoch of every
 *    slot recorded for the table, ours and other relays') are deleted in batches, leaf by leaf,
 *    or whole partitions of them dropped.
 * 4. The next epoch starts.
 *
 * Runs on the leader only, on its own connection. Every statement that takes a lock is bounded by
 * `prune.lockTimeout`; a round that waits longer gives up and the next tries again. With
 * `prune.mode: off` and `postgres.onLostSlot: recover-from-outbox`, only steps 1–3's marker run.
 */
export class Pruner {
  private timer: NodeJS.Timeout | null = null;
  private client: pg.Client | null = null;
  private epoch: Epoch | null = null;
  private running: Promise<void> | null = null;
  /** stop() was called: the round in progress ends after its statement. */
  private stopped = false;
  private readonly partitions: PartitionKeeper;
  /** What the log last said holds each table's pruning, to say it again only when it changes. */
  private readonly said = new Map<string, string>();
  /** The slots the held-by gauge has set, per table, to zero them when another takes over. */
  private readonly heldBy = new Map<string, string>();

  constructor(
    private readonly cfg: Config,
    /** The confirmed position: the watermark, asked only with a position and its origin. */
    private readonly confirmed: Confirmed,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {
    this.partitions = new PartitionKeeper(cfg, metrics, log);
  }

  /** Pruning or the marker are configured at all. */
  static wanted(cfg: Config): boolean {
    return cfg.outbox.prune.mode !== 'off' || cfg.postgres.onLostSlot === 'recover-from-outbox';
  }

  start(): void {
    if (this.timer) return;
    this.stopped = false;
    this.timer = setInterval(() => this.tick(), this.cfg.outbox.prune.intervalMs);
    this.timer.unref();
    this.tick();
  }

  /** Stops after the statement in progress; a new leadership starts a new epoch. */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
    this.epoch = null;
    const c = this.client;
    this.client = null;
    await c?.end().catch(() => undefined);
  }

  private tick(): void {
    if (this.running || this.stopped) return;
    this.running = this.round()
      .catch((err: unknown) => {
        this.log.warn({ err }, 'pruning round failed; the next round tries again');
        const c = this.client;
        this.client = null;
        void c?.end().catch(() => undefined);
      })
      .finally(() => {
        this.running = null;
      });
  }

  /** One round: start an epoch, or finish one and start the next. */
  async round(): Promise<void> {
    const client = await this.connection();
    if (this.epoch === null) {
      this.epoch = await startEpoch(client);
      return;
    }
    const { origin, walLsn } = this.epoch;
    if (!this.confirmed.hasPassed(origin, walLsn)) {
      const now = this.confirmed.origin;
      if (now !== null && !sameOrigin(now, origin)) {
        // The relay streams from another server or timeline than the epoch's WAL position
        // belongs to (a failover): that position proves nothing there, so start again.
        this.log.info(
          { epochTimeline: origin.timeline, timeline: now.timeline },
          'pruning starts a new epoch: the confirmed position is on another timeline',
        );
        this.epoch = await startEpoch(client);
        return;
      }
      this.log.debug(
        { confirmed: formatLsn(this.confirmed.lsn), epochLsn: formatLsn(walLsn) },
        'pruning waits for the watermark to pass the epoch',
      );
      return;
    }
    const { xmin, since } = this.epoch;
    const slot = this.cfg.postgres.slot;
    await updateMarker(client, this.cfg.postgres.publication, (m) =>
      withEpoch(m, slot, { xid: xmin.toString(), since, at: new Date().toISOString() }),
    );
    this.metrics.confirmedEpochXid.set(Number(xmin));
    const prune = this.cfg.outbox.prune;
    for (const table of this.cfg.outbox.tables) {
      if (this.stopped) return;
      if (prune.mode === 'off') continue;
      const floor = await readFloor(client, table);
      this.report(table, floor);
      // Whole partitions hold every shard's rows: shard 0 alone creates and drops them.
      const partitionKeeper = (this.cfg.postgres.shard?.index ?? 0) === 0;
      const parts = prune.mode === 'partitions' && partitionKeeper ? await this.partitions.premake(client, table) : null;
      if (floor?.kind === 'epoch') {
        // Rows that found no daily partition (the default one) are pruned row by row, as a
        // table that is not partitioned for days is.
        const share = prune.mode === 'delete' ? this.cfg.postgres.shard : undefined;
        const rowWise = prune.mode === 'delete' ? [table.qualified] : (parts ?? []).filter((p) => p.isDefault).map((p) => p.qualified);
        for (const relation of rowWise)
          for (const leaf of await leavesOf(client, relation)) await this.deleteRows(client, table, leaf, floor.xid, share);
        for (const part of parts ?? []) {
          if (this.stopped) return;
          if (this.partitions.expired(part)) await this.partitions.drop(client, table, part, floor.xid);
        }
      }
      await this.reportOldest(client, table);
    }
    this.epoch = await startEpoch(client);
  }

  /** Says (metrics; the log when it changed) which slot sets the table's prune floor. */
  private report(table: TableConfig, floor: Floor | null): void {
    const previous = this.heldBy.get(table.name);
    const holder = floor?.slot ?? null;
    if (previous !== undefined && previous !== holder) this.metrics.pruneHeldBy.set({ table: table.name, slot: previous }, 0);
    if (holder !== null) {
      this.metrics.pruneHeldBy.set({ table: table.name, slot: holder }, 1);
      this.heldBy.set(table.name, holder);
    } else this.heldBy.delete(table.name);
    if (floor?.kind === 'epoch') this.metrics.pruneFloorXid.set({ table: table.name }, Number(floor.xid));
    const line = describeFloor(floor, this.cfg.postgres.slot);
    if (this.said.get(table.name) === line) return;
    this.said.set(table.name, line);
    const held = floor === null || floor.kind === 'held' || floor.slot !== this.cfg.postgres.slot;
    this.log.info({ table: table.name, slot: floor?.slot, publication: floor?.publication, held }, line);
  }

  private async connection(): Promise<pg.Client> {
    if (this.client) return this.client;
    const client = await connectAdmin(this.cfg.postgres);
    // Partition bounds are read back as text: make their format fixed.
    await client.query(`SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'`);
    client.on('end', () => {
      if (this.client === client) this.client = null;
    });
    this.client = client;
    return client;
  }

  /** Batched DELETEs of the rows below `floorXid` and older than `retain`, in one leaf. */
  private async deleteRows(client: pg.Client, table: TableConfig, leaf: string, floorXid: bigint, share?: Shard): Promise<number> {
    const prune = this.cfg.outbox.prune;
    const sql = deleteBatchSql(table, leaf, share);
    let total = 0;
    for (;;) {
      if (this.stopped) break;
      const deleted = await bounded(client, prune.lockTimeoutMs, (c) =>
        c.query(sql, [prune.retainMs, floorXid.toString(), prune.batchSize, leaf]),
      );
      if (deleted === null) {
        this.metrics.pruneSkipped.inc({ reason: 'lock_timeout' });
        this.log.info({ table: leaf }, 'pruning gave up this round: a DELETE waited past prune.lockTimeout');
        break;
      }
      const n = deleted.rowCount ?? 0;
      total += n;
      if (n > 0) this.metrics.prunedRows.inc({ table: table.name }, n);
      if (n < prune.batchSize) break;
      await sleep(prune.pauseMs);
    }
    if (total > 0) this.log.info({ table: leaf, rows: total }, 'pruned confirmed rows');
    return total;
  }

  private async reportOldest(client: pg.Client, table: TableConfig): Promise<void> {
    const col = quoteIdent(table.createdAt);
    try {
      const { rows } = await client.query<{ age: number | null }>(
        `SELECT extract(epoch FROM now() - ${col})::float8 AS age FROM ${table.qualified} ORDER BY ${col} LIMIT 1`,
      );
      this.metrics.oldestRowAge.set({ table: table.name }, rows[0]?.age ?? 0);
    } catch (err) {
      this.log.debug({ err, table: table.qualified }, 'reading the oldest row failed');
    }
  }
}

/** An epoch: the snapshot's xmin, then the WAL insert position, and when it began (server clock, text). */
interface Epoch {
  xmin: bigint;
  walLsn: Lsn;
  /** The server and timeline whose WAL `walLsn` is a position of. */
  origin: Origin;
  since: string;
}

/** What the pruner asks of the watermark (positions/watermark.ts). */
export interface Confirmed {
  readonly lsn: Lsn;
  readonly origin: Origin | null;
  hasPassed(origin: Origin, lsn: Lsn): boolean;
}

/**
 * Starts an epoch: the snapshot's xmin first, then (a later statement) the WAL insert position,
 * with the server and timeline it belongs to.
 */
async function startEpoch(client: pg.Client): Promise<Epoch> {
  const x = await client.query<{ x: string; t: string }>(
    `SELECT pg_snapshot_xmin(pg_current_snapshot())::text AS x, clock_timestamp()::text AS t`,
  );
  const w = await walInsertPoint(client);
  return { xmin: BigInt(x.rows[0]?.x ?? '0'), walLsn: w.lsn, origin: w.origin, since: x.rows[0]?.t ?? '' };
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
