import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { type Config, allShards, quoteIdent, shardName } from '../config/config.js';
import { ExitCode, UsageError, exitCodeFor, oneLine } from '../errors.js';
import { pendingPeers } from '../lifecycle/reshard.js';
import { FENCE_PREFIX } from '../pipeline/fence.js';
import { tryLeaderLock } from '../postgres/leader.js';
import { readMarker, updateMarker, withReshard, withoutSlot } from '../postgres/marker.js';
import { ensurePublication } from '../postgres/publication.js';
import { connectAdmin } from '../source/connect.js';
import { ensureSlot } from '../source/ensure-slot.js';

/**
 * `outboxd reshard -c NEW_FILE --from N|unsharded [--finish]` (docs/adr/0020-shards.md, the
 * runbook's "Resharding"): moves an outbox from the shard set it runs on (`--from`: N shards of the
 * same names, or the unsharded relay) to the one NEW_FILE's `postgres.shard.count` describes, while
 * writers keep writing.
 *
 * Without --finish (idempotent; run it again after any failure): creates the new set's
 * publications and slots, records each new slot as `waiting` in its marker (under its leader lock,
 * so no new relay streams before), then writes the fence. Old relays stop at the fence once the
 * broker has everything before it; new relays wait for that, then start at the fence.
 * With --finish, once every new shard has started and the old relays are stopped: drops the old
 * slots, forgets them, and drops an old publication that no other slot uses.
 */

interface Member {
  readonly slot: string;
  readonly publication: string;
}

export async function reshardCommand(
  cfg: Config,
  from: string | undefined,
  finish: boolean,
  out: NodeJS.WritableStream,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const news = allShards(cfg);
  const olds = oldSet(cfg, from);
  const newSlots = new Set(news.map((c) => c.postgres.slot));
  const clash = olds.find((o) => newSlots.has(o.slot));
  if (clash) throw new UsageError(`--from names slot ${clash.slot}, which is also in the new shard set: the two sets must differ`);
  const client = await connectAdmin(cfg.postgres);
  try {
    return finish ? await finishReshard(client, news, olds, out, err) : await startReshard(client, news, olds, out, err);
  } catch (e) {
    err.write(`outboxd: ${oneLine(e)}\n`);
    return exitCodeFor(e);
  } finally {
    await client.end().catch(() => undefined);
  }
}

/** The shard set the outbox runs on now: `--from N` (the config's names) or `--from unsharded`. */
function oldSet(cfg: Config, from: string | undefined): Member[] {
  const slot = cfg.postgres.shard?.slot ?? cfg.postgres.slot;
  const publication = cfg.postgres.shard?.publication ?? cfg.postgres.publication;
  if (from === 'unsharded') return [{ slot, publication }];
  const count = Number(from);
  if (!Number.isInteger(count) || count < 1 || count > 64)
    throw new UsageError(`--from must be the current shard count (1 to 64) or "unsharded", got "${from ?? ''}"`);
  return Array.from({ length: count }, (_, index) => ({
    slot: shardName(slot, { index, count }),
    publication: shardName(publication, { index, count }),
  }));
}

async function startReshard(client: pg.Client, news: Config[], olds: Member[], out: NodeJS.WritableStream, err: NodeJS.WritableStream) {
  const { rows } = await client.query<{ slot_name: string }>('SELECT slot_name FROM pg_replication_slots WHERE slot_name = ANY($1)', [
    olds.map((o) => o.slot),
  ]);
  if (rows.length === 0) {
    err.write(`outboxd: none of the old slots (${olds.map((o) => o.slot).join(', ')}) exists: nothing to reshard from; check --from\n`);
    return ExitCode.failure;
  }
  // One id for the whole reshard, kept across runs of this command.
  let id: string | null = null;
  for (const c of news) {
    const state = (await readMarker(client, c.postgres.publication)).reshards?.get(c.postgres.slot);
    if (state && state.state !== 'retired') id ??= state.id;
  }
  id ??= randomUUID();
  for (const c of news) {
    const { slot, publication } = c.postgres;
    const state = (await readMarker(client, publication)).reshards?.get(slot);
    if (state?.id !== id) {
      // Held by this connection until it ends: no relay of the new slot streams before it is marked.
      if (!(await tryLeaderLock(client, slot))) {
        err.write(`outboxd: a relay of new slot ${slot} is already running: stop the new shard set, then run reshard again\n`);
        return ExitCode.failure;
      }
      const existing = await client.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [slot]);
      if (existing.rows.length > 0) {
        err.write(
          `outboxd: slot ${slot} exists but is not part of this reshard: a relay may have published from it already; drop it (outboxd retire --slot ${slot}) and run reshard again\n`,
        );
        return ExitCode.failure;
      }
      // Marked before the slot exists: a slot of this set is never without its part in the reshard.
      await ensurePublication(client, { ...c, postgres: { ...c.postgres, createPublication: true } });
      await updateMarker(client, publication, (m) => withReshard(m, slot, { id: id as string, state: 'waiting', peers: olds }));
    }
    const { created } = await ensureSlot(client, { ...c.postgres, createSlot: true, onLostSlot: 'exit' });
    out.write(`-- new shard: publication ${publication}, slot ${slot}: ${created ? 'created' : 'exists'}, ${state?.state ?? 'waiting'}\n`);
  }
  const fence = JSON.stringify({ id, retire: olds.map((o) => o.slot), start: news.map((c) => c.postgres.slot) });
  const emitted = await client.query<{ lsn: string }>('SELECT pg_logical_emit_message(true, $1, $2)::text AS lsn', [FENCE_PREFIX, fence]);
  out.write(
    `-- reshard ${id}: fence written at ${emitted.rows[0]?.lsn}. The old shards stop there; start the new shard set now (events after the fence wait in its slots until it runs)\n`,
  );
  await report(client, id, news, olds, out);
  return ExitCode.ok;
}

async function finishReshard(client: pg.Client, news: Config[], olds: Member[], out: NodeJS.WritableStream, err: NodeJS.WritableStream) {
  const states = await Promise.all(
    news.map(async (c) => (await readMarker(client, c.postgres.publication)).reshards?.get(c.postgres.slot)),
  );
  const id = states.find((s) => s !== undefined)?.id;
  if (id === undefined) {
    err.write('outboxd: no reshard is recorded for the new shard set: run reshard without --finish first\n');
    return ExitCode.failure;
  }
  const notStarted = news.filter((_, i) => states[i]?.state !== 'started').map((c) => c.postgres.slot);
  const pending = await pendingPeers(client, id, olds);
  if (notStarted.length > 0 || pending.length > 0) {
    await report(client, id, news, olds, out);
    err.write(
      `outboxd: reshard ${id} is not done yet (see above): run --finish again once every old shard retired and every new one started\n`,
    );
    return ExitCode.failure;
  }
  for (const o of olds) {
    if (!(await tryLeaderLock(client, o.slot))) {
      err.write(
        `outboxd: a relay of old slot ${o.slot} still runs (retired, publishing nothing): stop the old shard set, then run --finish again\n`,
      );
      return ExitCode.failure;
    }
    await client.query('SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1', [o.slot]);
    const exists = await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [o.publication]);
    if (exists.rows.length === 0) continue;
    const left = await updateMarker(client, o.publication, (m) => withoutSlot(m, o.slot));
    if (left.slots.length === 0) await client.query(`DROP PUBLICATION ${quoteIdent(o.publication)}`);
    out.write(
      `-- old shard: slot ${o.slot} dropped; publication ${o.publication} ${left.slots.length === 0 ? 'dropped' : `kept (still used by ${left.slots.join(', ')})`}\n`,
    );
  }
  out.write(`-- reshard ${id}: finished; the outbox runs on ${news.length} shard(s)\n`);
  return ExitCode.ok;
}

/** Where each old and new shard stands. */
async function report(client: pg.Client, id: string, news: Config[], olds: Member[], out: NodeJS.WritableStream): Promise<void> {
  const pending = new Set(await pendingPeers(client, id, olds));
  for (const o of olds) out.write(`   old ${o.slot}: ${pending.has(o.slot) ? 'relaying up to the fence' : 'retired'}\n`);
  for (const c of news) {
    const state = (await readMarker(client, c.postgres.publication)).reshards?.get(c.postgres.slot);
    out.write(`   new ${c.postgres.slot}: ${state?.state === 'started' ? 'started' : 'waiting'}\n`);
  }
}
