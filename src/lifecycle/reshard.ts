import type pg from 'pg';
import type { Config } from '../config/config.js';
import { ConfigError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { Fence, FenceGate } from '../pipeline/fence.js';
import type { Pipeline } from '../pipeline/pipeline.js';
import { type ReshardState, readMarker, updateMarker, withReshard } from '../postgres/marker.js';

/**
 * A relay's side of a reshard (docs/adr/0020-shards.md; `outboxd reshard` starts one). Its slot's
 * entry in its publication's marker says which side it is on:
 *
 * - none, or `started`: relay as usual. A fence that names this slot in `retire` makes it an old
 *   shard: from the fence on it discards everything; once the pipeline has the broker's
 *   confirmation of everything before the fence, it records `retired` and only then lets the slot
 *   pass the fence. A retired relay keeps confirming its slot (the WAL is not held) and publishes
 *   nothing, until `outboxd reshard --finish` drops it.
 * - `waiting`: a new shard. Before it streams, it waits until every old slot is `retired` (gone,
 *   after --finish, counts too): then everything before the fence is on the broker, so nothing it
 *   publishes can overtake an older event of the same key. It discards what its stream holds before
 *   the fence, and at the fence records `started`, again before the slot may pass the fence.
 * - `retired`: discard everything.
 */
export class ReshardGate implements FenceGate {
  private mode: 'open' | 'before-fence' | 'retired' = 'open';
  private state: ReshardState | null = null;
  private signal: AbortSignal = new AbortController().signal;

  constructor(
    private readonly cfg: Config,
    private readonly admin: () => Promise<pg.Client>,
    private readonly pipeline: Pipeline,
    private readonly metrics: Metrics,
    private readonly log: Logger,
  ) {}

  get discarding(): boolean {
    return this.mode !== 'open';
  }

  /** True while this relay is an old shard that reached its fence: it publishes nothing. */
  get retired(): boolean {
    return this.mode === 'retired';
  }

  /**
   * Before a session streams: reads this slot's part in a reshard and, for a new shard, waits until
   * every old shard has retired. Returns false when `signal` stopped the wait.
   */
  async prepare(signal: AbortSignal, onWaiting: (why: string | null) => void): Promise<boolean> {
    this.signal = signal;
    const { slot, publication } = this.cfg.postgres;
    const client = await this.admin();
    this.state = (await readMarker(client, publication)).reshards?.get(slot) ?? null;
    this.mode = this.state?.state === 'retired' ? 'retired' : this.state?.state === 'waiting' ? 'before-fence' : 'open';
    this.metrics.reshardRetired.set(this.mode === 'retired' ? 1 : 0);
    if (this.mode === 'retired') {
      this.log.warn(
        { reshard: this.state?.id },
        'this shard was retired by a reshard: it publishes nothing and only keeps its slot moving; remove it with outboxd reshard --finish',
      );
    }
    if (this.mode !== 'before-fence' || this.state === null) return true;
    const { id, peers } = this.state;
    for (let said = ''; ; ) {
      const pending = await pendingPeers(await this.admin(), id, peers);
      if (pending.length === 0) break;
      const why = `reshard ${id}: waiting for the old shard(s) ${pending.join(', ')} to publish everything before the fence`;
      if (why !== said) {
        this.log.info({ reshard: id, pending }, why);
        onWaiting(why);
        said = why;
      }
      if (!(await sleep(1_000, signal))) return false;
    }
    onWaiting(null);
    this.log.info({ reshard: id }, 'every old shard has retired: streaming, from the reshard fence on');
    return true;
  }

  atFence(fence: Fence, release: () => void): Promise<void> | undefined {
    const { slot } = this.cfg.postgres;
    if (this.mode === 'before-fence' && fence.id === this.state?.id && fence.start.includes(slot)) {
      // What follows the fence is ours from here on, but the slot passes it only once recorded.
      this.mode = 'open';
      return this.record({ ...this.state, state: 'started' }).then(() => {
        this.log.info({ reshard: fence.id }, 'reached the reshard fence: relaying this shard from here on');
        release();
      });
    }
    if (this.mode === 'open' && fence.retire.includes(slot)) {
      // Nothing after the fence is ours: the new shards publish it.
      this.mode = 'retired';
      return this.retire(fence, release);
    }
    release();
    return undefined;
  }

  private async retire(fence: Fence, release: () => void): Promise<void> {
    this.log.info({ reshard: fence.id }, 'reached the reshard fence: publishing what came before it, then retiring');
    // Held until the broker has confirmed everything before the fence. A halted pipeline (poison)
    // never gets there: the fence stays unreleased, and a restart meets it again.
    if (!(await this.pipeline.whenIdle(this.signal))) return;
    const peers = fence.start.map((s) => ({ slot: s, publication: '' }));
    await this.record({ id: fence.id, state: 'retired', peers });
    this.metrics.reshardRetired.set(1);
    this.log.warn(
      { reshard: fence.id },
      'retired by a reshard: everything before the fence is on the broker; this relay now publishes nothing. Remove it with outboxd reshard --finish',
    );
    release();
  }

  private async record(state: ReshardState): Promise<void> {
    const { slot, publication } = this.cfg.postgres;
    this.state = state;
    await updateMarker(await this.admin(), publication, (m) => withReshard(m, slot, state));
  }
}

/** The old slots that have not retired at fence `id`. One that is gone (reshard --finish) has. */
export async function pendingPeers(
  client: pg.Client,
  id: string,
  peers: ReadonlyArray<{ slot: string; publication: string }>,
): Promise<string[]> {
  const pending: string[] = [];
  for (const p of peers) {
    const state = (await readMarker(client, p.publication)).reshards?.get(p.slot);
    if (state?.state === 'retired' && state.id === id) continue;
    if (state?.state === 'retired') {
      throw new ConfigError(
        'postgres.shard',
        `old slot ${p.slot} retired at another reshard (${state.id}), not at ${id}: finish that one first (outboxd reshard --finish)`,
      );
    }
    const { rows } = await client.query('SELECT 1 FROM pg_replication_slots WHERE slot_name = $1', [p.slot]);
    if (rows.length === 0 && state === undefined) continue;
    pending.push(p.slot);
  }
  return pending;
}

function sleep(ms: number, signal: AbortSignal): Promise<boolean> {
  return new Promise((resolve) => {
    if (signal.aborted) return resolve(false);
    const done = (ok: boolean) => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      resolve(ok);
    };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
