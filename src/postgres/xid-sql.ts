/**
 * "This row's inserting transaction is below the epoch", in SQL: the test that pruning deletes by
 * and lost-slot recovery republishes by (docs/adr/0011, 0012).
 *
 * A row's `xmin` is a 32-bit transaction id; an epoch is a full 64-bit one (xid8). The two are
 * compared in 64 bits:
 * - Every row that is not frozen has an xmin in the window [relfrozenxid, next xid) of its own
 *   table (PostgreSQL's invariant: relfrozenxid is older than every unfrozen xmin in the table).
 *   The window is under 2^31 long, so such an xmin has exactly one 64-bit value in it, found by
 *   its distance from relfrozenxid, whose own 64-bit value is known from the next xid.
 * - An xmin outside the window (or 0–2, the special ids) is frozen. Freezing keeps the raw xid
 *   (PostgreSQL 9.4 and later), which may then be any number, even one that looks young: its
 *   transaction is older than relfrozenxid, and that is all that can be known. It is below the
 *   epoch if relfrozenxid is at or below the epoch; otherwise it cannot be proven, and the row is
 *   kept (pruning) or published again (recovery).
 *
 * `age(xmin)` (what this replaced) is a signed 32-bit distance: a row more than 2^31
 * transactions old got a negative age and was never pruned.
 *
 * The next xid is the current snapshot's xmax, which needs no transaction id of our own (a
 * recovery reads in a read-only snapshot). Every row a statement sees is from a transaction
 * below it.
 */
const WRAP = 4294967296;

/**
 * The SQL condition. `epoch`: an SQL expression of the epoch as bigint (a parameter:
 * `$1::bigint`); `relfrozenxid`: an SQL expression of the row's table's relfrozenxid (xid), for a
 * partition its own leaf's (`tableoid` names the row's leaf).
 */
export function xminBelow(epoch: string, relfrozenxid: string = ROW_TABLE_FROZEN): string {
  const next = '(SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint)';
  const r32 = `(${relfrozenxid})::text::bigint`;
  const r64 = `(${next} - ((${next} % ${WRAP} - ${r32} + ${WRAP}) % ${WRAP}))`;
  const x = 'xmin::text::bigint';
  const fromFrozen = `((${x} - ${r32} + ${WRAP}) % ${WRAP})`;
  return `(CASE WHEN ${x} >= 3 AND ${fromFrozen} < ${next} - ${r64} THEN ${r64} + ${fromFrozen} < ${epoch} ELSE ${r64} <= ${epoch} END)`;
}

/** The relfrozenxid of the table the row is in (its leaf partition). */
export const ROW_TABLE_FROZEN = '(SELECT c.relfrozenxid FROM pg_class c WHERE c.oid = tableoid)';

/** The relfrozenxid of one named table (a parameter such as `$3`, the table's quoted name). */
export function tableFrozen(tableParam: string): string {
  return `(SELECT c.relfrozenxid FROM pg_class c WHERE c.oid = ${tableParam}::regclass)`;
}
