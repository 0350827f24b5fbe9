/**
 * THE RESHARD FENCE (docs/adr/0020-shards.md): a transactional logical message that `outboxd
 * reshard` writes once the new shard set's slots exist. Every slot decodes it at the same place
 * in commit order. The old set's relays publish everything before it and nothing after; the new
 * set's relays discard everything before it and publish everything after. Its content names both
 * sets' slots, so each relay knows from the message alone which side it is on.
 */
export const FENCE_PREFIX = 'outboxd.reshard';

export interface Fence {
  /** The reshard's id, also recorded in each new slot's marker entry. */
  readonly id: string;
  /** The old set's slots: they stop at the fence. */
  readonly retire: readonly string[];
  /** The new set's slots: they start at the fence. */
  readonly start: readonly string[];
}

/** The fence a message carries, or null when it is not one. */
export function parseFence(content: Buffer | null): Fence | null {
  if (content === null) return null;
  try {
    const doc = JSON.parse(content.toString('utf8')) as Record<string, unknown>;
    const names = (v: unknown) => (Array.isArray(v) && v.every((s) => typeof s === 'string') ? (v as string[]) : null);
    const retire = names(doc.retire);
    const start = names(doc.start);
    if (typeof doc.id !== 'string' || retire === null || start === null) return null;
    return { id: doc.id, retire, start };
  } catch {
    return null;
  }
}

/**
 * What the ingest asks of a reshard in progress (lifecycle/reshard.ts implements it): whether to
 * discard what it reads (a new shard before its fence, an old shard after it), and what to do at a
 * fence. `release` lets the watermark pass the fence's transaction: the gate calls it only once its
 * marker records what the fence changed, so a restart never resumes past a fence it has not acted on.
 */
export interface FenceGate {
  readonly discarding: boolean;
  atFence(fence: Fence, release: () => void): Promise<void> | undefined;
}
