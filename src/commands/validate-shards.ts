import type pg from 'pg';
import { type Config, shardConfig } from '../config/config.js';
import { oneLine } from '../errors.js';
import { readMarker } from '../postgres/marker.js';
import { checkPublishes, checkShardable } from '../postgres/publication-checks.js';
import type { AddCheck } from './validate-check.js';

/**
 * `validate --connect` with postgres.shard: the server can filter rows (PostgreSQL 15+), the key
 * columns can be hashed, and every shard's publication that exists has exactly its own filter. One
 * wrong filter anywhere loses the keys no shard takes or sends a key through two, so each shard's
 * validate checks them all, not only its own (its own is checked with the publication).
 */
export async function shardChecks(client: pg.Client, cfg: Config, add: AddCheck): Promise<void> {
  const shard = cfg.postgres.shard;
  if (!shard) return;
  try {
    await checkShardable(client, cfg);
  } catch (err) {
    add('shards', 'fail', oneLine(err));
    return;
  }
  const missing: string[] = [];
  const wrong: string[] = [];
  for (let i = 0; i < shard.count; i++) {
    if (i === shard.index) continue;
    const other = shardConfig(cfg, i);
    const pub = other.postgres.publication;
    const { rows } = await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [pub]);
    if (rows.length === 0) {
      missing.push(pub);
      continue;
    }
    try {
      await checkPublishes(client, other);
    } catch (err) {
      wrong.push(oneLine(err));
    }
  }
  if (wrong.length > 0) add('shards', 'fail', wrong.join('; '));
  else if (missing.length > 0)
    add(
      'shards',
      'warn',
      `shard ${shard.index} of ${shard.count}; the publications ${missing.join(', ')} do not exist yet, so their keys are relayed by no one until they do — outboxd setup creates every shard's`,
    );
  else add('shards', 'ok', `shard ${shard.index} of ${shard.count}; every shard's publication has its own row filter`);
}

/** This slot's part in a reshard, when it has one (lifecycle/reshard.ts): a warning that says what it waits for. */
export async function reshardCheck(client: pg.Client, cfg: Config, add: AddCheck): Promise<void> {
  const { slot, publication } = cfg.postgres;
  const exists = await client.query('SELECT 1 FROM pg_publication WHERE pubname = $1', [publication]);
  if (exists.rows.length === 0) return;
  const state = (await readMarker(client, publication)).reshards?.get(slot);
  if (!state) return;
  if (state.state === 'started') add('reshard', 'ok', `${slot} started at the fence of reshard ${state.id}`);
  else if (state.state === 'retired')
    add('reshard', 'warn', `${slot} was retired by reshard ${state.id}: it publishes nothing; remove it with outboxd reshard --finish`);
  else
    add(
      'reshard',
      'warn',
      `${slot} is a new shard of reshard ${state.id}: it waits until ${state.peers.map((p) => p.slot).join(', ')} retired at the fence, then starts there`,
    );
}
