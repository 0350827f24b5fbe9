/**
 * The door to kafkajs's internals. kafkajs 2.2.4 (February 2023) is its last release; outboxd
 * changes it from inside, for speed, with the same bytes and results, and reaches past its public
 * API where that lacks something (docs/adr/0010, 0016, 0018):
 * - `sendMessages` is replaced by one that tracks each partition's acknowledgement, not each
 *   broker's, so a leader moving between a send's attempts neither duplicates nor drops records
 *   (kafkajs-send.ts, docs/adr/0024); it groups with a one-pass grouper, where kafkajs's
 *   `groupMessagesPerPartition` copies a partition's array once per message (1.3 s per million
 *   messages at 500 per send, docs/benchmarks.md), and a refused Produce response carries its
 *   per-partition answers to it;
 * - the Produce v3 request factory is replaced by our encoder (produce-encoder.ts), every
 *   request is framed with one copy instead of two (request-framing.ts), and the request queue's
 *   throttle timer is armed only while requests wait (it spun at 1 ms idle);
 * - kafkajs's codec table gets snappy, lz4 and zstd (codecs.ts), for what kafkajs encodes or
 *   decodes itself: messages with a timestamp, and fetched batches (docs/adr/0017);
 * - the transactional producer remembers its transaction coordinator (kafkajs-coordinator.ts);
 * - kafkajs's internal Cluster and brokers give metadata without a producer and exact
 *   read_committed reads (kafkajs-cluster.ts).
 *
 * The door is four files: this one, the only module that loads kafkajs (it installs the rest
 * before kafkajs loads), kafkajs-cluster.ts, kafkajs-coordinator.ts and kafkajs-send.ts, which
 * reach kafkajs's internals only through what this one hands them (kafkajsFile(), the eosManager
 * factory, kafkajs's error helpers). No
 * other module loads kafkajs for its values (test/unit/kafkajs-door.test.ts reads every file
 * under src/): they get it from installKafkajs(), which the Kafka sink calls at start (loadSink)
 * and createKafka calls before it builds a client. So the send and the coordinator cache are
 * always in place before kafkajs's producer module loads, whatever imports what first (commit
 * d4c6c78: one static import of kafkajs ahead of the old side-effect import made the Kafka drain
 * 0.81x as fast).
 *
 * installKafkajs() first checks that kafkajs is the version and shape this module was written
 * for, and stops the relay with one line if not.
 */
import { readFileSync } from 'node:fs';
import { Module, createRequire } from 'node:module';
import type kafkajs from 'kafkajs';
import { SinkError } from '../../errors.js';
import { CODEC_ID, codecOf } from './codecs.js';
import { EOS_CLUSTER_MEMBERS, type EosFactory, rememberingCoordinator } from './kafkajs-coordinator.js';
import { type ProduceResponseModule, type SendKafkajs, carryResponse, sendMessages } from './kafkajs-send.js';
import { PartitionCounts, partitionOf } from './partition.js';
import { PRODUCE_API_KEY, type ProduceFactory, encodeProduce, ours } from './produce-encoder.js';
import { HEADROOM, frameRequest } from './request-framing.js';

type Kafkajs = typeof kafkajs;

/** The kafkajs release this module was written for (package.json pins it). */
export const KAFKAJS_VERSION = '2.2.4';

const require = createRequire(import.meta.url);
const SEND_MESSAGES = 'kafkajs/src/producer/sendMessages.js';
const MESSAGE_PRODUCER = 'kafkajs/src/producer/messageProducer.js';
const ERRORS = 'kafkajs/src/errors.js';
const PROTOCOL_ERRORS = 'kafkajs/src/protocol/error.js';
/** The Produce response versions kafkajs speaks (v0 to v7). */
const PRODUCE_RESPONSES = [0, 1, 2, 3, 4, 5, 6, 7].map((v) => `kafkajs/src/protocol/requests/produce/v${v}/response.js`);
const PRODUCE_V3 = 'kafkajs/src/protocol/requests/produce/v3/request.js';
/** kafkajs's fetched-batch decoder and the private symbol of its Cluster factory (kafkajs-cluster.ts). */
export const BATCH = 'kafkajs/src/consumer/batch.js';
export const CREATE_CLUSTER = 'private:Kafka:createCluster';
const REQUEST_QUEUE = 'kafkajs/src/network/requestQueue/index.js';
const EOS_MANAGER = 'kafkajs/src/producer/eosManager/index.js';
const PRODUCER = 'kafkajs/src/producer/index.js';
const REQUEST = 'kafkajs/src/protocol/request.js';
const CONNECTION = 'kafkajs/src/network/connection.js';

/** What the version check reads of the installed kafkajs (a parameter, for the tests). */
export interface KafkajsProbe {
  version(): string;
  /** Whether kafkajs has this internal file. */
  has(path: string): boolean;
}

const installed: KafkajsProbe = {
  version: () => (require('kafkajs/package.json') as { version: string }).version,
  has: (path) => {
    try {
      require.resolve(path);
      return true;
    } catch {
      return false;
    }
  },
};

function unsupported(version: string, what: string): SinkError {
  return new SinkError(
    'kafkajs_unsupported',
    `kafkajs ${version} is installed, but outboxd's Kafka sink is written for kafkajs ${KAFKAJS_VERSION} (${what}): install kafkajs ${KAFKAJS_VERSION}, as outboxd's package.json pins it`,
    { retriable: false },
  );
}

/** Throws the one-line SinkError (code SINK_FATAL) when kafkajs is not the one this module was written for. */
export function checkKafkajs(probe: KafkajsProbe = installed): void {
  const version = probe.version();
  if (version !== KAFKAJS_VERSION) throw unsupported(version, 'its internals differ between releases');
  for (const path of [
    SEND_MESSAGES,
    MESSAGE_PRODUCER,
    ERRORS,
    PROTOCOL_ERRORS,
    ...PRODUCE_RESPONSES,
    PRODUCE_V3,
    BATCH,
    REQUEST_QUEUE,
    EOS_MANAGER,
    REQUEST,
    CONNECTION,
  ]) {
    if (!probe.has(path)) throw unsupported(version, `${path} is missing`);
  }
}

// --- groupMessagesPerPartition -----------------------------------------------------------------

type Grouper = (args: {
  topic: string;
  partitionMetadata: unknown[];
  messages: unknown[];
  partitioner: (a: { topic: string; partitionMetadata: unknown[]; message: unknown }) => number;
}) => Record<number, unknown[]>;

/**
 * Each topic's partition count as kafkajs last grouped a send for it: the count its partitioner
 * (murmur2 of the key, modulo the count) used. Set once per topic per send, for trace spans; the
 * topics sent to last.
 */
const partitionCounts = new PartitionCounts(Number.POSITIVE_INFINITY);

/**
 * The partition kafkajs's default partitioner sent a message with this topic and key to (the
 * same murmur2 as partition.ts), from the count of its last send to the topic; null before.
 */
export function kafkajsPartitionOf(topic: string, key: string): number | null {
  const count = partitionCounts.peek(topic);
  return count === undefined ? null : partitionOf(key, count);
}

/** kafkajs's groupMessagesPerPartition, in one pass: the same object. */
export const GROUPER: Grouper = ({ topic, partitionMetadata, messages, partitioner }) => {
  const result: Record<number, unknown[]> = {};
  if (partitionMetadata.length === 0) return result;
  if (partitionCounts.get(topic) !== partitionMetadata.length) partitionCounts.set(topic, partitionMetadata.length);
  for (const message of messages) {
    const partition = partitioner({ topic, partitionMetadata, message });
    let list = result[partition];
    if (list === undefined) {
      list = [];
      result[partition] = list;
    }
    list.push(message);
  }
  return result;
};

/**
 * Puts outboxd's sendMessages (kafkajs-send.ts, with GROUPER) where kafkajs's message producer
 * will require it, and makes every Produce refusal carry its response's per-partition answers
 * to it. kafkajs's message producer keeps the function it required when it loaded: a kafkajs
 * loaded before this door (only a test does that, importing kafkajs itself first) keeps its own.
 */
function installSendMessages(): boolean {
  const errors = require(ERRORS) as { KafkaJSMetadataNotLoaded: new (m: string) => Error };
  const { staleMetadata, createErrorFromCode } = require(PROTOCOL_ERRORS) as {
    staleMetadata(e: unknown): boolean;
    createErrorFromCode(code: number): Error;
  };
  for (const path of PRODUCE_RESPONSES) carryResponse(require(path) as ProduceResponseModule);
  const factory = sendMessages({
    metadataNotLoaded: (m) => new errors.KafkaJSMetadataNotLoaded(m),
    staleMetadata,
    errorOf: createErrorFromCode,
    group: GROUPER as SendKafkajs['group'],
  });
  return preload(SEND_MESSAGES, MESSAGE_PRODUCER, factory);
}

/** Puts `exports` in require's cache as `path`, unless `user` (which keeps what it requires) loaded already. */
function preload(path: string, user: string, exports: unknown): boolean {
  const resolved = require.resolve(path);
  if (require.cache[require.resolve(user)] === undefined && require.cache[resolved] === undefined) {
    const m = new Module(resolved);
    m.filename = resolved;
    m.loaded = true;
    m.exports = exports;
    require.cache[resolved] = m;
  }
  return require.cache[resolved]?.exports === exports;
}

// --- the Produce encoder -----------------------------------------------------------------------

/** kafkajs's own Produce v3 request factory (for the tests' byte comparison, and fallbacks). */
export function kafkajsProduce(): ProduceFactory {
  return state?.originalProduce ?? (require(PRODUCE_V3) as ProduceFactory);
}

/**
 * Makes kafkajs's Produce requests use encodeProduce. kafkajs requires its v3 request module
 * when it builds each request (v4 to v7 wrap v3), so replacing the module's exports suffices.
 */
function installProduceEncoder(): ProduceFactory {
  const original = require(PRODUCE_V3) as ProduceFactory;
  const mod = require.cache[require.resolve(PRODUCE_V3)] as NodeJS.Module;
  const faster: ProduceFactory = (args) => {
    if (!ours(args)) return original(args);
    return {
      apiKey: PRODUCE_API_KEY,
      apiVersion: 3,
      apiName: 'Produce',
      expectResponse: () => args.acks !== 0,
      encode: async () => {
        const buf = encodeProduce(args, HEADROOM);
        // What kafkajs's request framing reads of an Encoder, `buf`, `buffer` and `size()`, and the
        // room left for frameRequest to write the header in place.
        const buffer = buf.subarray(HEADROOM);
        return { buf, buffer, size: () => buffer.length, headroom: HEADROOM };
      },
    };
  };
  mod.exports = faster;
  return original;
}

// --- the request queue's throttle timer -------------------------------------------------------

/** The parts of kafkajs's RequestQueue that its throttle check reads. */
type RequestQueueState = {
  throttledUntil: number;
  throttleCheckTimeoutId: NodeJS.Timeout | null;
  pending: unknown[];
  checkPendingRequests(): void;
};

/**
 * kafkajs 2.2.4's scheduleCheckPendingRequests, armed only while requests wait. kafkajs arms it
 * after every response, idle or not, at `throttledUntil - Date.now()` (about minus the epoch):
 * Node runs it after 1 ms, it re-arms itself, and every idle broker connection wakes ~700 times a
 * second (60 ms of CPU a second, measured), while Node 24 prints a TimeoutNegativeWarning (kafkajs
 * issue 1751). With nothing pending there is nothing to check: push() re-arms it when it queues.
 */
function installQueueTimer(): void {
  const RequestQueue = require(REQUEST_QUEUE) as { prototype: { scheduleCheckPendingRequests(this: RequestQueueState): void } };
  RequestQueue.prototype.scheduleCheckPendingRequests = function (this: RequestQueueState) {
    if (this.throttleCheckTimeoutId || this.pending.length === 0) return;
    const throttled = this.throttledUntil - Date.now();
    const check = () => {
      this.throttleCheckTimeoutId = null;
      this.checkPendingRequests();
    };
    this.throttleCheckTimeoutId = setTimeout(check, throttled > 0 ? throttled : 10); // 10: CHECK_PENDING_REQUESTS_INTERVAL
  };
}

// --- the transaction coordinator, remembered (kafkajs-coordinator.ts) ---------------------------

/** The members of `cluster` that kafkajs's eosManager source uses (kafkajs-coordinator.ts's view serves these). */
export function eosClusterMembers(source: string): string[] {
  return [...new Set([...source.matchAll(/\bcluster\.(\w+)/g)].map((m) => m[1] as string))].sort();
}

/**
 * Wraps kafkajs's eosManager factory (rememberingCoordinator) where kafkajs's producer module will
 * require it. Like the send: a producer module loaded before this door keeps kafkajs's own, which
 * looks the coordinator up for every request, slower but the same.
 */
function installCoordinatorCache(): boolean {
  const path = require.resolve(EOS_MANAGER);
  const members = eosClusterMembers(readFileSync(path, 'utf8'));
  if (members.join() !== [...EOS_CLUSTER_MEMBERS].sort().join()) {
    throw unsupported(KAFKAJS_VERSION, `its eosManager uses cluster.${members.join(', cluster.')}`);
  }
  const original = require(path) as EosFactory;
  if (require.cache[require.resolve(PRODUCER)] !== undefined) return false;
  const mod = require.cache[path] as NodeJS.Module;
  mod.exports = rememberingCoordinator(original);
  return true;
}

// --- codecs -----------------------------------------------------------------------------------

/**
 * Registers outboxd's snappy, lz4 and zstd in kafkajs's codec table (kafkajs 2.2.4 throws "not
 * implemented" for them); gzip stays kafkajs's own. kafkajs hands `compress` an Encoder and
 * `decompress` a Buffer.
 */
function installCodecs(k: Kafkajs): void {
  for (const name of ['snappy', 'lz4', 'zstd'] as const) {
    const codec = codecOf(name) as NonNullable<ReturnType<typeof codecOf>>;
    (k.CompressionCodecs as Record<number, unknown>)[CODEC_ID[name]] = () => ({
      compress: async (encoder: { buffer: Buffer }) => codec.compress(encoder.buffer),
      decompress: async (data: Buffer) => codec.decompress(data),
    });
  }
}

// --- installation ------------------------------------------------------------------------------

interface Installed {
  readonly kafkajs: Kafkajs;
  readonly originalProduce: ProduceFactory;
  readonly sendMessages: boolean;
  readonly coordinatorCache: boolean;
}
let state: Installed | null = null;

/**
 * Checks kafkajs (checkKafkajs), installs outboxd's changes, loads kafkajs and returns it.
 * Idempotent: later calls return the same module. Throws a one-line SinkError (not retriable) if
 * kafkajs is not the version and shape this module was written for.
 */
export function installKafkajs(): Kafkajs {
  if (state) return state.kafkajs;
  checkKafkajs();
  const sends = installSendMessages();
  // kafkajs's connection frames every request with request-framing.ts (one copy, not two).
  preload(REQUEST, CONNECTION, frameRequest);
  const coordinatorCache = installCoordinatorCache();
  const loaded = require('kafkajs') as Kafkajs;
  const probe = new loaded.Kafka({ brokers: ['127.0.0.1:9092'], logLevel: loaded.logLevel.NOTHING });
  const create = Object.getOwnPropertySymbols(probe).find((s) => s.description === CREATE_CLUSTER);
  if (create === undefined || typeof (probe as unknown as Record<symbol, unknown>)[create] !== 'function') {
    throw unsupported(KAFKAJS_VERSION, `Kafka has no ${CREATE_CLUSTER}`);
  }
  const originalProduce = installProduceEncoder();
  installCodecs(loaded);
  installQueueTimer();
  state = { kafkajs: loaded, originalProduce, sendMessages: sends, coordinatorCache };
  return loaded;
}

/** What installKafkajs() put in place; null before it ran. */
export function kafkajsInstalled(): { sendMessages: boolean; coordinatorCache: boolean } | null {
  return state && { sendMessages: state.sendMessages, coordinatorCache: state.coordinatorCache };
}

/** A file of kafkajs, loaded once installKafkajs() ran: for the door's other files (kafkajs-cluster.ts). */
export function kafkajsFile<T>(path: string): T {
  installKafkajs();
  return require(path) as T;
}
