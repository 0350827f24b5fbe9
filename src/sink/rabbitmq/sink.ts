import type amqp from 'amqplib';
import type { RabbitMqSinkConfig } from '../../config/config.js';
import { PoisonError, SinkError } from '../../errors.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../../interfaces.js';
import type { Logger } from '../../observability/logger.js';
import { type ChannelFrames, channelFrames, sendEncoded } from './amqplib-internals.js';
import { encodePublish } from './encode.js';
import { amqpLimitProblem, surelyWithinLimits } from './limits.js';
import { amqpDeadLetter } from './dead-letter.js';
import { CLOSE_TIMEOUT_MS, ConfirmWaiter, closeWithin } from './confirms.js';
import { classifyAmqpError } from './errors.js';
import { checkExchange, connectAmqp, laneOf } from './connection.js';
import type { SinkStatus } from '../status.js';

/**
 * Over several channels, how many publishes go into amqplib's buffers before the sink lets the
 * event loop turn, so that the socket carries the first messages of a batch while the rest are
 * still being encoded. (Each channel's buffer holds 1,024 frames before `publish()` says wait, so
 * over 4 channels a batch of 2,000 would otherwise go out only once all of it is encoded.) One
 * channel turns at its buffer's `drain` alone: turning more often measured no faster, and its CPU
 * per message looked higher (docs/benchmarks.md, RabbitMQ layouts).
 */
const YIELD_EVERY = 256;

const nextTurn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** One connection's channels, and what belongs to them. */
interface ChannelSet {
  readonly channels: readonly amqp.ConfirmChannel[];
  /** Where each channel's frames go, for publishes outboxd encodes itself (null: through amqplib). */
  readonly frames: ReadonlyArray<ChannelFrames | null>;
  /**
   * Message ids the broker returned as unroutable on this connection, not yet claimed by their
   * batch. A return comes before its message's ack, so once a batch's confirms are in, its
   * returns are here; the batch takes its own out. Two batches at once never share an id
   * (pipeline/overlap.ts). Every channel of the set adds here, whichever of them has closed.
   */
  readonly returned: Set<string>;
}

/**
 * RabbitMQ through amqplib ConfirmChannels: one by default, sink.rabbitmq.channels on one
 * connection when asked.
 *
 * - Every message is published `persistent` and `mandatory`. A batch resolves only when every
 *   message is acked, on every channel. A nack, a closed channel or the confirm timeout fails the
 *   whole batch (retried whole by the pipeline); a `return` (no queue bound for the routing key)
 *   makes that message poison: its ack arrives after the return, so the ack alone proves nothing.
 * - Over several channels a message takes the channel of its shard key (connection.ts, laneOf):
 *   a key always takes the same one, in batch order, so per-key order holds.
 * - `publish()` returning false (the channel's buffer is full) waits for `drain`.
 * - A `blocked` connection (broker memory or disk alarm) holds publishing until `unblocked`
 *   and reports the sink down, so `/readyz` fails and WAL reading pauses via back-pressure.
 * - On any failure the connection is dropped; the pipeline's retry reconnects and republishes
 *   everything unconfirmed, so nothing is lost and per-key order holds after dedupe by id.
 */
export class RabbitMqSink implements Sink {
  readonly type = 'rabbitmq' as const;
  /**
   * The next batch goes out while the one before waits for its confirms (ADR 0022): each
   * publish() has its own ConfirmWaiter and its own returns, and fails on its own.
   */
  readonly batchesInFlight = 2;
  private model: amqp.ChannelModel | null = null;
  /** The open connection's channels; a publish keeps the set it started with. */
  private set: ChannelSet | null = null;
  private connecting: Promise<ChannelSet> | null = null;
  private blocked: { reason: string; until: Promise<void>; release: () => void } | null = null;
  /** Messages amqplib threw on (see publish): poison when the pipeline retries their batch. */
  private readonly refused = new WeakMap<OutboxMessage, PoisonError>();
  private lastError: Error | null = null;

  constructor(
    private readonly cfg: RabbitMqSinkConfig,
    private readonly needDeadLetter: boolean,
    private readonly log: Logger,
    private readonly status: SinkStatus,
  ) {}

  async connect(): Promise<void> {
    await this.channelSet();
    this.status.connection(true);
  }

  private channelSet(): Promise<ChannelSet> {
    if (this.set) return Promise.resolve(this.set);
    this.connecting ??= this.open().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  private async open(): Promise<ChannelSet> {
    // A channel closed under the last connection: that connection goes before a new one comes.
    if (this.model) await this.reset();
    const returned = new Set<string>();
    let model: amqp.ChannelModel;
    try {
      model = await connectAmqp(this.cfg);
    } catch (err) {
      this.status.connection(false);
      throw err;
    }
    model.on('error', (err: Error) => {
      this.lastError = err;
      this.log.debug({ err }, 'amqp connection error');
    });
    model.on('close', () => this.dropped(model));
    model.on('blocked', (reason: string) => {
      let release!: () => void;
      const until = new Promise<void>((r) => {
        release = r;
      });
      this.blocked = { reason, until, release };
      this.log.warn({ reason }, 'RabbitMQ blocked the connection (resource alarm): publishing paused');
      this.status.blocked(true);
    });
    model.on('unblocked', () => {
      this.log.info('RabbitMQ unblocked the connection: publishing resumes');
      this.unblock();
    });
    try {
      const channels: amqp.ConfirmChannel[] = [];
      for (let i = 0; i < this.cfg.channels; i++) {
        const ch = await model.createConfirmChannel();
        ch.on('error', (err: Error) => {
          this.lastError = err;
        });
        // One channel gone and the set is broken: the next publish opens a new connection.
        ch.on('close', () => {
          if (this.set?.channels === channels) this.set = null;
        });
        ch.on('return', (msg: amqp.Message) => {
          const id = msg.properties.messageId as string | undefined;
          if (id !== undefined) returned.add(id);
        });
        channels.push(ch);
      }
      const first = channels[0] as amqp.ConfirmChannel;
      await checkExchange(first, this.cfg, this.cfg.exchange, this.cfg.exchangeType);
      if (this.needDeadLetter) await checkExchange(first, this.cfg, this.cfg.deadLetterExchange, 'topic');
      this.model = model;
      this.set = { channels, frames: channels.map(channelFrames), returned };
      return this.set;
    } catch (err) {
      await closeWithin(model, CLOSE_TIMEOUT_MS);
      this.status.connection(false);
      throw classifyAmqpError(err, 'opening a RabbitMQ channel');
    }
  }

  private dropped(model: amqp.ChannelModel): void {
    if (this.model !== model) return;
    this.model = null;
    this.set = null;
    this.unblock();
    this.status.connection(false);
  }

  private unblock(): void {
    const b = this.blocked;
    this.blocked = null;
    if (b) {
      b.release();
      this.status.blocked(false);
    }
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    if (this.blocked) await this.blocked.until;
    const set = await this.channelSet();
    const channels = set.channels;
    const n = channels.length;
    const poisoned: Array<{ index: number; error: PoisonError }> = [];
    const confirms = new ConfirmWaiter(this.cfg.confirmTimeoutMs);
    const exchange = this.cfg.exchange;
    for (let i = 0; i < batch.length; i++) {
      const m = batch[i] as OutboxMessage;
      const problem = this.refused.get(m);
      if (problem) {
        poisoned.push({ index: i, error: problem });
        continue;
      }
      const lane = n === 1 ? 0 : laneOf(m.key, n);
      const ch = channels[lane] as amqp.ConfirmChannel;
      const frames = set.frames[lane] ?? null;
      let ok: boolean;
      try {
        const encoded = frames === null ? null : encodePublish(frames.channel, frames.frameMax, exchange, m.destination, m);
        if (encoded !== null) ok = sendEncoded(frames as ChannelFrames, encoded, confirms.callback());
        else {
          const body = typeof m.payload === 'string' ? Buffer.from(m.payload) : m.payload;
          ok = ch.publish(exchange, m.destination, body, properties(m), confirms.callback());
        }
      } catch (err) {
        // amqplib queued the confirm callback before it threw, so this channel's confirms are out
        // of step: drop it. A closed channel is a connection fault; anything else is this
        // message's (a limit the precheck missed): remembered, it is poison when the pipeline
        // retries the batch on a new channel.
        confirms.abandon();
        await this.reset();
        if (err instanceof TypeError || err instanceof RangeError) {
          this.refused.set(m, new PoisonError('rejected', `amqplib refused message ${m.id.slice(0, 100)}: ${err.message}`, err));
          throw new SinkError('client_refused', `amqplib refused message ${m.id.slice(0, 100)}: ${err.message}`, {
            retriable: true,
            cause: err,
          });
        }
        throw classifyAmqpError(err, 'publishing to RabbitMQ');
      }
      if (!ok) await this.drained(ch);
      else if (n > 1 && i % YIELD_EVERY === YIELD_EVERY - 1) await nextTurn();
    }
    try {
      await confirms.wait(() => this.blocked?.until);
    } catch (err) {
      throw classifyAmqpError(err, 'waiting for RabbitMQ publisher confirms');
    }
    if (set.returned.size > 0) this.unroutable(batch, poisoned, set.returned);
    this.status.connection(true);
    return { poisoned: poisoned.sort((a, b) => a.index - b.index) };
  }

  /** Adds the batch's returned messages (no queue bound for their routing key) to `poisoned`. */
  private unroutable(batch: readonly OutboxMessage[], poisoned: Array<{ index: number; error: PoisonError }>, returned: Set<string>): void {
    const already = new Set(poisoned.map((p) => p.index));
    for (let i = 0; i < batch.length; i++) {
      const m = batch[i] as OutboxMessage;
      if (returned.delete(m.id) && !already.has(i)) {
        poisoned.push({
          index: i,
          error: new PoisonError('unroutable', `no queue is bound to exchange "${this.cfg.exchange}" for routing key "${m.destination}"`),
        });
      }
    }
  }

  /** What makes a message unpublishable before it is sent: its size, or an AMQP limit. */
  check(m: OutboxMessage): PoisonError | null {
    if (m.sizeBytes > this.cfg.maxMessageBytes) {
      return new PoisonError(
        'oversized',
        `message of ${m.sizeBytes} bytes exceeds sink.rabbitmq.maxMessageBytes (${this.cfg.maxMessageBytes})`,
      );
    }
    return surelyWithinLimits(m) ? null : amqpLimitProblem(m.destination, properties(m));
  }

  /** Waits for `drain`, or fails if the channel closes first. */
  private drained(ch: amqp.ConfirmChannel): Promise<void> {
    return new Promise((resolve, reject) => {
      const onDrain = () => {
        ch.off('close', onClose);
        resolve();
      };
      const onClose = () => {
        ch.off('drain', onDrain);
        reject(
          new SinkError(
            'channel_closed',
            `RabbitMQ channel closed while waiting for drain${this.lastError ? `: ${this.lastError.message}` : ''}`,
            { retriable: true },
          ),
        );
      };
      ch.once('drain', onDrain);
      ch.once('close', onClose);
    });
  }

  /**
   * Sends the dead letter in the largest form that fits, under a routing key that fits
   * (rabbitmq/dead-letter.ts: publishable by construction); resolves once the broker confirmed it.
   * Unroutable (no queue bound for its routing key) is retried: the poison message waits.
   */
  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    if (this.blocked) await this.blocked.until;
    const { channels, returned } = await this.channelSet();
    const ch = channels[0] as amqp.ConfirmChannel;
    const { routingKey, body, props } = amqpDeadLetter(letter, this.cfg);
    const confirms = new ConfirmWaiter(this.cfg.confirmTimeoutMs);
    ch.publish(this.cfg.deadLetterExchange, routingKey, body, props, confirms.callback());
    try {
      await confirms.wait(() => this.blocked?.until);
    } catch (err) {
      throw classifyAmqpError(err, `publishing to dead-letter exchange ${this.cfg.deadLetterExchange}`);
    }
    if (returned.delete(props.messageId)) {
      throw new SinkError(
        'dead_letter_unroutable',
        `no queue is bound to dead-letter exchange "${this.cfg.deadLetterExchange}" for routing key "${routingKey}"; bind one (or bind "#"), the poison message waits`,
        { retriable: true },
      );
    }
  }

  async reset(): Promise<void> {
    const model = this.model;
    this.model = null;
    this.set = null;
    this.unblock();
    if (model) await closeWithin(model, CLOSE_TIMEOUT_MS);
  }

  async close(): Promise<void> {
    await this.reset();
  }
}

/** The publish options of a message: its AMQP properties and header table. */
export function properties(m: OutboxMessage): amqp.Options.Publish {
  return {
    persistent: true,
    mandatory: true,
    messageId: m.id,
    correlationId: m.correlationId ?? undefined,
    replyTo: m.replyTo ?? undefined,
    type: m.type ?? undefined,
    // AMQP timestamps are seconds; the commit time is when the event happened.
    timestamp: Math.floor(m.txn.commitTimeMs / 1000),
    contentType: m.contentType,
    appId: 'outboxd',
    headers: { ...m.headers, aggregatetype: m.aggregateType, aggregateid: m.key },
  };
}
