import type { Config } from '../config/config.js';
import { ExitCode, oneLine } from '../errors.js';
import { formatLsn } from '../lsn.js';
import { connectAdmin } from '../source/connect.js';
import { readFloor } from '../postgres/prune-floor.js';
import { EMPTY_MARKER, readMarker } from '../postgres/marker.js';
import { inspectSlot } from '../source/slot.js';

export interface SlotStatus {
  slot: string;
  exists: boolean;
  active: boolean;
  activePid: number | null;
  confirmedFlushLsn: string | null;
  restartLsn: string | null;
  currentLsn: string;
  lagBytes: number | null;
  retainedWalBytes: number | null;
  walStatus: string | null;
  safeWalSizeBytes: number | null;
  /** The last confirmed epoch the marker records (pruning, lost-slot recovery), or null. */
  confirmedEpoch: { xid: string; since: string | null } | null;
  /** A lost-slot recovery that has not finished (postgres.onLostSlot: recover-from-outbox). */
  recovering: boolean;
  /** Every slot the publication's marker records, with its confirmed epoch xid (null: none yet). */
  recorded: Array<{ slot: string; epochXid: string | null }>;
  /** Per outbox table: the slot that sets its prune floor, and the floor (null: held, nothing pruned). */
  pruneFloor: Array<{ table: string; slot: string | null; xid: string | null }>;
  problem: string | null;
}

/** Reads the slot's state from Postgres: what `outboxd status` prints. */
export async function slotStatus(cfg: Config): Promise<SlotStatus> {
  const client = await connectAdmin(cfg.postgres);
  try {
    const slot = await inspectSlot(client, cfg.postgres.slot);
    const { rows } = await client.query<{ cur: string; lag: string | null; retained: string | null; safe: string | null }>(
      `SELECT pg_current_wal_lsn()::text AS cur,
              (SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::text FROM pg_replication_slots WHERE slot_name = $1) AS lag,
              (SELECT (pg_current_wal_lsn() - restart_lsn)::text FROM pg_replication_slots WHERE slot_name = $1) AS retained,
              (SELECT safe_wal_size::text FROM pg_replication_slots WHERE slot_name = $1) AS safe`,
      [cfg.postgres.slot],
    );
    const r = rows[0];
    const doc = await readMarker(client, cfg.postgres.publication).catch(() => EMPTY_MARKER);
    const own = doc.epochs.get(cfg.postgres.slot);
    const pruneFloor: SlotStatus['pruneFloor'] = [];
    for (const t of cfg.outbox.tables) {
      const f = await readFloor(client, t).catch(() => null);
      pruneFloor.push({ table: t.name, slot: f?.slot ?? null, xid: f?.kind === 'epoch' ? f.xid.toString() : null });
    }
    let problem: string | null = null;
    if (!slot) {
      problem = doc.slots.includes(cfg.postgres.slot)
        ? 'the slot is gone although outboxd created it: see docs/runbook.md#lost-slot'
        : 'the slot does not exist yet (outboxd run or outboxd setup creates it)';
    } else if (slot.walStatus === 'lost' || slot.invalidationReason) {
      problem = `the slot is invalidated (${slot.invalidationReason ?? 'wal_status lost'}): see docs/runbook.md#lost-slot`;
    }
    return {
      slot: cfg.postgres.slot,
      exists: slot !== null,
      active: slot?.active ?? false,
      activePid: slot?.activePid ?? null,
      confirmedFlushLsn: slot?.confirmedFlushLsn != null ? formatLsn(slot.confirmedFlushLsn) : null,
      restartLsn: slot?.restartLsn != null ? formatLsn(slot.restartLsn) : null,
      currentLsn: r?.cur ?? '',
      lagBytes: r?.lag != null ? Number(r.lag) : null,
      retainedWalBytes: r?.retained != null ? Number(r.retained) : null,
      walStatus: slot?.walStatus ?? null,
      safeWalSizeBytes: r?.safe != null ? Number(r.safe) : null,
      confirmedEpoch: own ? { xid: own.xid, since: own.since || null } : null,
      recovering: doc.recoveries.has(cfg.postgres.slot),
      recorded: doc.slots.map((slot) => ({ slot, epochXid: doc.epochs.get(slot)?.xid ?? null })),
      pruneFloor,
      problem,
    };
  } finally {
    await client.end().catch(() => undefined);
  }
}

export function formatStatus(s: SlotStatus): string {
  const size = (n: number | null) => (n === null ? '-' : humanBytes(n));
  const lines = [
    `slot ${s.slot}: ${s.exists ? (s.active ? `active (pid ${s.activePid})` : 'inactive') : 'missing'}`,
    `  confirmed LSN   ${s.confirmedFlushLsn ?? '-'}`,
    `  restart LSN     ${s.restartLsn ?? '-'}`,
    `  current LSN     ${s.currentLsn}`,
    `  lag             ${size(s.lagBytes)} (WAL not yet confirmed by outboxd)`,
    `  retained WAL    ${size(s.retainedWalBytes)}`,
    `  wal_status      ${s.walStatus ?? '-'}${s.safeWalSizeBytes !== null ? ` (safe_wal_size ${size(s.safeWalSizeBytes)})` : ''}`,
  ];
  if (s.confirmedEpoch)
    lines.push(`  confirmed epoch xid ${s.confirmedEpoch.xid}${s.confirmedEpoch.since ? ` (began ${s.confirmedEpoch.since})` : ''}`);
  if (s.recovering) lines.push('  recovering      a lost-slot recovery has not finished (outboxd run finishes it)');
  const others = s.recorded.filter((r) => r.slot !== s.slot);
  if (others.length > 0)
    lines.push(`  other slots     ${others.map((r) => `${r.slot} (epoch ${r.epochXid ?? 'none yet'})`).join(', ')} on this publication`);
  for (const f of s.pruneFloor)
    if (f.slot !== null)
      lines.push(
        `  prune floor     ${f.table}: ${f.xid === null ? `held by slot ${f.slot} (no confirmed epoch yet)` : `transaction ${f.xid}, set by slot ${f.slot}`}`,
      );
  if (s.problem) lines.push(`  problem         ${s.problem}`);
  return `${lines.join('\n')}\n`;
}

export function humanBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${i === 0 ? v : v.toFixed(1)} ${units[i]}`;
}

/** `outboxd status`: 0 when the slot exists and is usable, 4 when it is missing or invalidated. */
export async function statusCommand(cfg: Config, json: boolean, out: NodeJS.WritableStream): Promise<number> {
  let s: SlotStatus;
  try {
    s = await slotStatus(cfg);
  } catch (err) {
    out.write(json ? `${JSON.stringify({ error: oneLine(err) })}\n` : `outboxd: ${oneLine(err)}\n`);
    return ExitCode.failure;
  }
  out.write(json ? `${JSON.stringify(s)}\n` : formatStatus(s));
  // Missing-but-never-created is fine (a first start will create it); lost or invalidated is not.
  const lost = s.problem !== null && (s.exists || s.problem.includes('gone'));
  return lost ? ExitCode.slotLost : ExitCode.ok;
}
