import type { Config } from '../config/config.js';
import { IDENTIFIER_PATTERN } from '../config/schema-kit.js';
import { ExitCode, UsageError, oneLine } from '../errors.js';
import { connectAdmin } from '../source/connect.js';
import { tryLeaderLock } from '../postgres/leader.js';
import { readMarker, updateMarker, withoutSlot } from '../postgres/marker.js';
import { inspectSlot } from '../source/slot.js';

/**
 * `outboxd retire -c FILE [--slot NAME]`: forgets a relay for good. Pruning deletes only rows
 * that every slot recorded for an outbox has confirmed, so a relay that is gone for good (its
 * slot dropped, its config deleted) holds pruning back until it is forgotten, and that is never
 * guessed: this command does it, explicitly.
 *
 * It takes the slot's leader lock (so no instance of that relay runs or waits as a standby),
 * drops the slot if it still exists, and removes the slot, its confirmed epoch and any recovery
 * of it from the publication's marker. Without --slot it retires the config's own slot.
 * Exit 0 when retired; 1 when a relay of that slot still runs, or there is nothing to retire.
 */
export async function retireCommand(
  cfg: Config,
  slotName: string | undefined,
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const slot = slotName ?? cfg.postgres.slot;
  if (!new RegExp(IDENTIFIER_PATTERN).test(slot))
    throw new UsageError(`--slot must be a replication slot name ([a-z_][a-z0-9_]*), got "${slot}"`);
  const pub = cfg.postgres.publication;
  const client = await connectAdmin(cfg.postgres);
  try {
    // Held until this connection ends: no instance of the retired relay can start meanwhile.
    if (!(await tryLeaderLock(client, slot))) {
      err.write(
        `outboxd: a relay of slot ${slot} is running or waiting as a standby (it holds the slot's leader lock): stop every instance of it first\n`,
      );
      return ExitCode.failure;
    }
    const existing = await inspectSlot(client, slot);
    if (existing?.active) {
      err.write(`outboxd: replication slot ${slot} is active (pid ${existing.activePid}): stop the process that streams from it first\n`);
      return ExitCode.failure;
    }
    const marker = await readMarker(client, pub);
    if (!existing && !marker.slots.includes(slot)) {
      err.write(`outboxd: slot ${slot} neither exists nor is recorded on publication ${pub}: nothing to retire\n`);
      return ExitCode.failure;
    }
    if (existing) await client.query('SELECT pg_drop_replication_slot($1)', [slot]);
    await updateMarker(client, pub, (m) => (m.slots.includes(slot) ? withoutSlot(m, slot) : null));
    out.write(
      `retired slot ${slot}: ${existing ? 'dropped the replication slot; ' : ''}publication ${pub} no longer records it or its confirmed epoch, so pruning no longer waits for it and a relay started with that slot name again begins at "now"\n`,
    );
    return ExitCode.ok;
  } catch (e) {
    err.write(`outboxd: ${oneLine(e)}\n`);
    return ExitCode.failure;
  } finally {
    await client.end().catch(() => undefined);
  }
}
