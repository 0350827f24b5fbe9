import { describe, expect, it } from 'vitest';
import { type KafkaServer, startKafka } from '../harness/kafka.js';
import { type RabbitServer, startRabbitMQ } from '../harness/rabbitmq.js';
import { defer, until } from '../integration/support.js';
import { type SinkKind, bundle, steadyWriter, waitDelivered } from './fixtures.js';

/**
 * A broker that stops answering without closing the connection (SIGSTOP: a hung process, a
 * black-holed network) makes the relay not ready within sink.stallTimeout, long before the
 * client's own request or confirm timeout (30 s here), and ready again once it answers. Nothing is
 * lost. Each sink gets a broker of its own, so pausing it disturbs no other test.
 */
const STALL_TIMEOUT_S = 5; // the default

for (const kind of ['kafka', 'rabbitmq'] as SinkKind[]) {
  describe(`stalled broker → ${kind}`, () => {
    it(`a SIGSTOPped broker makes /readyz 503 within sink.stallTimeout + 2 s; SIGCONT brings it back, nothing lost`, async () => {
      await using broker: KafkaServer | RabbitServer = kind === 'kafka' ? await startKafka() : await startRabbitMQ();
      // Never leave it paused, whatever happens below.
      await using _resume = defer(() => broker.resume());
      await using b = await bundle({
        kind,
        ...(kind === 'kafka' ? { kafkaBrokers: (broker as KafkaServer).brokers.join(',') } : { amqpUrl: (broker as RabbitServer).url }),
        brokerTimeout: '30s',
      });
      const relay = b.start();
      await relay.ready();
      // Rows keep coming, so there is always a publish waiting for the broker.
      const writer = steadyWriter(b);
      await until('first rows delivered', async () => b.reader.delivered().length > 5, 30_000);
      broker.pause();
      const paused = performance.now();
      await until(
        'not ready: stalled',
        async () => {
          const r = await relay.http('/readyz');
          return r.status === 503 && r.body.includes('stalled');
        },
        (STALL_TIMEOUT_S + 10) * 1000,
        100,
      );
      const seconds = (performance.now() - paused) / 1000;
      console.log(`[stall ${kind}] SIGSTOP to /readyz 503: ${seconds.toFixed(2)} s (sink.stallTimeout ${STALL_TIMEOUT_S} s)`);
      expect(seconds).toBeLessThan(STALL_TIMEOUT_S + 2);
      expect(await relay.metric('outboxd_sink_stalled')).toBe(1);
      expect((await relay.http('/livez')).status).toBe(200);
      broker.resume();
      await until('ready again', async () => (await relay.http('/readyz')).status === 200, 60_000, 100);
      expect(await relay.metric('outboxd_sink_stalled')).toBe(0);
      await writer.stop();
      await waitDelivered(b.reader, writer.ids, 120_000);
    }, 240_000);
  });
}
