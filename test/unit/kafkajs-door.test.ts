import { readFileSync, readdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseConfig } from '../../src/config/load.js';
import { SinkError } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';

/**
 * kafkajs's internals behind one door: the files named kafkajs-….ts in src/sink/kafka/, no
 * more than DOOR lists: src/sink/kafka/kafkajs-internals.ts, the only module that loads kafkajs,
 * and the three it hands what they reach (src/sink/kafka/kafkajs-cluster.ts,
 * src/sink/kafka/kafkajs-coordinator.ts, src/sink/kafka/kafkajs-send.ts). The door must be in
 * place before kafkajs's producer module loads, or kafkajs keeps its own sendMessages (which
 * duplicates and drops records when leaders move: test/unit/kafkajs-send.test.ts) and eosManager,
 * and the relay is slower too (commit d4c6c78: a Kafka drain 0.81x as fast). That holds if
 * nothing but the loader loads kafkajs, which the first test checks of every file under src/ (no
 * list of entry files to keep), and the loader installs the door before it loads kafkajs.
 */
const SRC = resolve(import.meta.dirname, '../../src');
const LOADER = 'sink/kafka/kafkajs-internals.ts';
const DOOR = [LOADER, 'sink/kafka/kafkajs-cluster.ts', 'sink/kafka/kafkajs-coordinator.ts', 'sink/kafka/kafkajs-send.ts'];
const require = createRequire(import.meta.url);

/** Every .ts file under src/, relative to it. */
function sources(dir = SRC): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith('.ts') ? [join(dir, e.name).slice(SRC.length + 1)] : [],
  );
}

/** A file's code: no comments, no `import type`. */
function code(file: string): string {
  return readFileSync(join(SRC, file), 'utf8')
    .split('\n')
    .filter((line) => !/^\s*import\s+type\b/.test(line) && !/^\s*(\*|\/\/)/.test(line))
    .join('\n');
}

/** Whether a file loads kafkajs, or a file of it, other than in an `import type` (an import, a require). */
function loadsKafkajs(file: string): boolean {
  return /(\bfrom\s+|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)['"`]kafkajs(\/[^'"`]*)?['"`]/m.test(code(file));
}

/** Whether a file names a file of kafkajs (to load it, or to reach it through the loader), or kafkajs's private symbols. */
function reachesKafkajs(file: string): boolean {
  const text = code(file);
  return loadsKafkajs(file) || /['"`]kafkajs\/[^'"`]*['"`]|['"`]private:/.test(text);
}

describe('the kafkajs door', () => {
  it('is the only place under src/ that loads kafkajs or names a file of it, and only its loader loads it', () => {
    const all = sources();
    // A new door file is a decision: it goes into DOOR and the loader's header, not in by its name alone.
    expect(all.filter((f) => f.startsWith('sink/kafka/kafkajs-')).sort()).toEqual([...DOOR].sort());
    expect(all.filter(loadsKafkajs)).toEqual([LOADER]);
    expect(all.filter(reachesKafkajs).every((f) => DOOR.includes(f))).toBe(true);
  });

  it('is installed by the Kafka sink at start, before any Kafka client is built', async () => {
    const { kafkajsInstalled, kafkajsProduce } = await import('../../src/sink/kafka/kafkajs-internals.js');
    const { PRODUCE_RESPONSE } = await import('../../src/sink/kafka/kafkajs-send.js');
    expect(require.cache[require.resolve('kafkajs/src/producer/sendMessages.js')]).toBeUndefined();
    expect(kafkajsInstalled()).toBeNull();
    const { loadSink } = await import('../../src/sink/index.js');
    const cfg = parseConfig('postgres:\n  url: postgres://u@h/db\nsink:\n  type: kafka\n  kafka:\n    brokers: [127.0.0.1:1]\n', {});
    await loadSink(cfg.sink, 'slot', false, createLogger('silent'));
    expect(kafkajsInstalled()).toEqual({ sendMessages: true, coordinatorCache: true });
    // What kafkajs's producer will call: outboxd's sendMessages (sendMessages: true says it is in
    // require's cache where kafkajs's message producer loads it) and Produce encoder.
    expect(require('kafkajs/src/protocol/requests/produce/v3/request.js')).not.toBe(kafkajsProduce());
    // A refused Produce response, of every version kafkajs speaks, carries its per-partition answers.
    for (const v of [3, 5, 7]) {
      const { parse } = require(`kafkajs/src/protocol/requests/produce/v${v}/response.js`) as { parse(d: object): Promise<unknown> };
      const data = {
        topics: [
          {
            topicName: 't',
            partitions: [
              { partition: 0, errorCode: 0 },
              { partition: 1, errorCode: 6 },
            ],
          },
        ],
      };
      const err = (await parse(data).catch((e: unknown) => e)) as Record<symbol, unknown> & { type: string };
      expect(err.type).toBe('NOT_LEADER_FOR_PARTITION');
      expect(err[PRODUCE_RESPONSE]).toBe(data);
      const ok = { topics: [{ topicName: 't', partitions: [{ partition: 0, errorCode: 0 }] }] };
      expect(await parse(ok)).toBe(ok);
    }
  });

  it('stops the relay with one line when kafkajs is another version', async () => {
    const { checkKafkajs } = await import('../../src/sink/kafka/kafkajs-internals.js');
    const err = (() => {
      try {
        checkKafkajs({ version: () => '2.3.0', has: () => true });
      } catch (e) {
        return e;
      }
    })() as SinkError;
    expect(err).toBeInstanceOf(SinkError);
    expect(err.code).toBe('SINK_FATAL');
    expect(err.retriable).toBe(false);
    expect(err.message).not.toContain('\n');
    expect(err.message).toMatch(
      /^kafkajs 2\.3\.0 is installed, but outboxd's Kafka sink is written for kafkajs 2\.2\.4 .*: install kafkajs 2\.2\.4/,
    );
  });

  it('stops the relay when kafkajs lacks an internal file the door replaces', async () => {
    const { checkKafkajs } = await import('../../src/sink/kafka/kafkajs-internals.js');
    const probe = { version: () => '2.2.4', has: (p: string) => !p.endsWith('sendMessages.js') };
    expect(() => checkKafkajs(probe)).toThrow(/kafkajs\/src\/producer\/sendMessages\.js is missing/);
  });

  it("stops the relay when kafkajs's eosManager uses its cluster otherwise than the coordinator cache serves", async () => {
    const { eosClusterMembers } = await import('../../src/sink/kafka/kafkajs-internals.js');
    const { EOS_CLUSTER_MEMBERS } = await import('../../src/sink/kafka/kafkajs-coordinator.js');
    const source = readFileSync(require.resolve('kafkajs/src/producer/eosManager/index.js'), 'utf8');
    expect(eosClusterMembers(source)).toEqual([...EOS_CLUSTER_MEMBERS].sort());
    expect(eosClusterMembers(`${source}\ncluster.findLeaderForPartitions()`)).not.toEqual([...EOS_CLUSTER_MEMBERS].sort());
  });

  it('accepts the kafkajs installed here', async () => {
    const { checkKafkajs } = await import('../../src/sink/kafka/kafkajs-internals.js');
    expect(() => checkKafkajs()).not.toThrow();
  });

  it("arms kafkajs's throttle check only while requests wait: no 1 ms spin when idle, no TimeoutNegativeWarning", async () => {
    const { installKafkajs } = await import('../../src/sink/kafka/kafkajs-internals.js');
    installKafkajs();
    const RequestQueue = require('kafkajs/src/network/requestQueue/index.js') as new (
      o: object,
    ) => {
      scheduleCheckPendingRequests(): void;
      checkPendingRequests(): void;
      pending: unknown[];
      throttledUntil: number;
      throttleCheckTimeoutId: NodeJS.Timeout | null;
    };
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    try {
      const logger = { debug() {}, info() {}, warn() {}, error() {} };
      const q = new RequestQueue({ maxInFlightRequests: 1, requestTimeout: 1000, clientId: 't', broker: 'b', logger });
      // Idle and unthrottled (what follows every response): kafkajs 2.2.4 armed a timer at about
      // -Date.now(), which re-armed itself every millisecond for as long as the client lived.
      let checks = 0;
      const check = q.checkPendingRequests.bind(q);
      q.checkPendingRequests = () => {
        checks++;
        check();
      };
      q.checkPendingRequests();
      // Nothing armed, so nothing can run again: the one check is the one made here.
      expect(q.throttleCheckTimeoutId).toBeNull();
      expect(checks).toBe(1);
      // A request waits, throttled for 50 ms: checked when the throttle ends.
      q.throttledUntil = Date.now() + 50;
      q.pending = [{}];
      const later = new Promise<number>((resolve) => {
        const start = Date.now();
        q.checkPendingRequests = () => resolve(Date.now() - start);
      });
      q.scheduleCheckPendingRequests();
      expect(await later).toBeGreaterThanOrEqual(40);
      await new Promise((r) => setImmediate(r)); // a warning is emitted on the next tick
    } finally {
      process.off('warning', onWarning);
    }
    expect(warnings).toEqual([]);
  });
});
