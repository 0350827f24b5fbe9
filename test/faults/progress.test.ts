import { describe, expect, it } from 'vitest';
import { type KafkaServer, startKafka } from '../harness/kafka.js';
import { defer, stays, until } from '../integration/support.js';
import { bundle, steadyWriter, waitDelivered } from './fixtures.js';

/**
 * The progress watchdog (postgres.progressTimeout): the slot's confirmed position stands still
 * while the server's WAL grows, and nothing else says so. Here the broker is SIGSTOPped with
 * every other alarm set far away (request timeout and sink.stallTimeout 10 minutes), so the relay
 * stays connected, streaming and, but for the watchdog, ready. The watchdog must make it not
 * ready, with the reason, within progressTimeout plus a poll or two; SIGCONT must clear it, and
 * nothing is lost.
 */
const PROGRESS_TIMEOUT_S = 2;

describe('progress watchdog', () => {
  it('a confirmed position that stands still while WAL grows makes /readyz 503 (no progress) and outboxd_stuck 1; it clears when it moves', async () => {
    await using broker: KafkaServer = await startKafka();
    await using _resume = defer(() => broker.resume());
    await using b = await bundle({
      kind: 'kafka',
      kafkaBrokers: broker.brokers.join(','),
      brokerTimeout: '10m',
      sinkExtra: '  stallTimeout: 10m\n',
    });
    const relay = b.start({ OUTBOXD_TEST_PROGRESS_TIMEOUT: `${PROGRESS_TIMEOUT_S}s` });
    await relay.ready();
    const writer = steadyWriter(b);
    await until('first rows delivered', async () => b.reader.delivered().length > 5, 30_000);
    // Moving: never stuck, however long the rows keep coming. The window must outlast the
    // timeout (the point is that it elapses); every poll in it is a check.
    await stays(
      'not stuck, ready, while rows keep coming',
      async () => (await relay.metric('outboxd_stuck')) === 0 && (await relay.http('/readyz')).status === 200,
      (PROGRESS_TIMEOUT_S + 1) * 1000,
      200,
    );

    broker.pause();
    const paused = performance.now();
    await until(
      'not ready: no progress',
      async () => {
        const r = await relay.http('/readyz');
        return r.status === 503 && r.body.includes('no progress');
      },
      (PROGRESS_TIMEOUT_S + 20) * 1000,
      100,
    );
    const seconds = (performance.now() - paused) / 1000;
    console.log(
      `[progress] SIGSTOP to /readyz 503 (no progress): ${seconds.toFixed(2)} s (postgres.progressTimeout ${PROGRESS_TIMEOUT_S} s)`,
    );
    const body = (await relay.http('/readyz')).body;
    expect(body).toMatch(/confirmed position has stayed at [0-9A-F]+\/[0-9A-F]+ for \d+ s while the server's WAL is \d+ bytes ahead/);
    expect(await relay.metric('outboxd_stuck')).toBe(1);
    expect(await relay.metric('outboxd_confirmed_unchanged_seconds')).toBeGreaterThanOrEqual(PROGRESS_TIMEOUT_S);
    // Nothing else noticed: the broker stall alarm is 10 minutes away, the process is live.
    expect(await relay.metric('outboxd_sink_stalled')).toBe(0);
    expect((await relay.http('/livez')).status).toBe(200);
    expect(relay.stderr).toMatch(/no progress: the slot's confirmed position has stayed at/);

    broker.resume();
    await until('ready again', async () => (await relay.http('/readyz')).status === 200, 60_000, 100);
    expect(await relay.metric('outboxd_stuck')).toBe(0);
    await writer.stop();
    await waitDelivered(b.reader, writer.ids, 120_000);
  }, 240_000);
});
