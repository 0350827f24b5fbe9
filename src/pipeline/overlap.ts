import type { Batches, Item, MessageItem } from './batches.js';

/**
 * Two batches at the broker at once (Sink.batchesInFlight = 2, docs/adr/0022), without giving
 * up per-key order.
 *
 * A batch in flight may still fail, and then it is published again. If a later batch held a
 * message of the same key and was confirmed meanwhile, that later message would reach consumers
 * before the earlier one's retry: per-key order broken for good, whatever dedupe by id does. So a
 * batch published beside another holds no key, and no message id, that the other holds; the
 * messages that would share one wait at the front of the queue, in order, until the batch in
 * flight is done. A message id too, because a broker's per-message answer (a RabbitMQ return)
 * names the message by its id.
 */

/** What a batch in flight holds: its keys and its message ids. */
interface Claims {
  readonly keys: ReadonlySet<string>;
  readonly ids: ReadonlySet<string>;
}

/** The keys and ids of `batch`. */
function claimsOf(batch: readonly MessageItem[]): Claims {
  const keys = new Set<string>();
  const ids = new Set<string>();
  for (const { message } of batch) {
    keys.add(message.key);
    ids.add(message.id);
  }
  return { keys, ids };
}

/**
 * Splits a batch taken while `busy` is in flight: `send`, the messages that share no key or id
 * with it, and `wait`, the rest, both in their order. A message of a key that already waits
 * waits too, whatever made that one wait, so a key's messages stay in order.
 */
function splitByClaims(batch: readonly MessageItem[], busy: Claims): { send: MessageItem[]; wait: Item[] } {
  const send: MessageItem[] = [];
  const wait: Item[] = [];
  let waiting: Set<string> | null = null;
  for (const item of batch) {
    const { key, id } = item.message;
    if (busy.keys.has(key) || busy.ids.has(id) || waiting?.has(key)) {
      wait.push(item);
      waiting ??= new Set();
      waiting.add(key);
    } else send.push(item);
  }
  return { send, wait };
}

/**
 * A batch at the broker, and its end. `batch` is null when nothing may go beside it (a poison
 * item, or one batch at a time); its claims are worked out only if another batch is taken while
 * it is out, which through a quiet outbox is never.
 */
interface Out {
  readonly batch: readonly MessageItem[] | null;
  claims: Claims | null;
  done: Promise<void>;
}

/** The batches at the broker, oldest first: at most `lanes` (1 or 2). */
export class Overlap {
  private readonly out: Out[] = [];

  /** `onDone` is called each time a batch has left. */
  constructor(
    private readonly lanes: number,
    private readonly onDone: () => void,
  ) {}

  /** A batch is at the broker. */
  get busy(): boolean {
    return this.out.length > 0;
  }

  /** No other batch may go out now. */
  get full(): boolean {
    return this.out.length >= this.lanes;
  }

  /** Resolves when one of the batches at the broker is done. */
  oneDone(): Promise<void> {
    return Promise.race(this.out.map((o) => o.done));
  }

  allDone(): Promise<void> {
    return Promise.all(this.out.map((o) => o.done)).then(() => undefined);
  }

  /**
   * What of a batch just taken may go out now: all of it when nothing is at the broker;
   * otherwise the messages that share no key or id with the batch there. The rest goes back to
   * the front of `queue`; and nothing goes beside a poison item or before one.
   */
  beside(batch: Item[], queue: Batches): Item[] | null {
    const other = this.out[0];
    if (other === undefined) return batch;
    if (other.batch === null || (batch[0] as Item).kind === 'poison') {
      queue.putBack(batch);
      return null;
    }
    other.claims ??= claimsOf(other.batch);
    const { send, wait } = splitByClaims(batch as MessageItem[], other.claims);
    queue.putBack(wait);
    return send.length > 0 ? send : null;
  }

  /**
   * Starts `publish` for a batch, handing it the end of the batch before it (its retry waits for
   * that); the batch leaves when `publish` settles, and `publish` must not reject.
   */
  send(batch: Item[], publish: (before: Promise<void> | undefined) => Promise<void>): void {
    const poison = (batch[0] as Item).kind === 'poison';
    const before = this.out.at(-1)?.done;
    const out: Out = { batch: this.lanes > 1 && !poison ? (batch as MessageItem[]) : null, claims: null, done: Promise.resolve() };
    this.out.push(out);
    out.done = publish(before).finally(() => {
      this.out.splice(this.out.indexOf(out), 1);
      this.onDone();
    });
  }
}
