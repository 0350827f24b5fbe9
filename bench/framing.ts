/**
 * Kafka request framing (src/sink/kafka/request-framing.ts): the CPU kafkajs's own framing and
 * outboxd's take per Produce request of a given size, each fed a body as the door's encode()
 * hands it over (kafkajs: an exact copy out of the encoder's scratch; outboxd: the same copy with
 * room in front).
 *
 *   npm run bench:framing               (BENCH_FRAMING_BYTES=200000, about 500 messages)
 *
 * Prints one line per framing: µs of CPU and of wall time per request.
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { HEADROOM, frameRequest } from '../src/sink/kafka/request-framing.js';

const require = createRequire(import.meta.url);
const source = readFileSync(require.resolve('kafkajs/src/protocol/request.js'), 'utf8');
type Framing = (args: unknown) => Promise<unknown>;
const theirs = new Function('require', 'module', `${source}; return module.exports;`)(
  (p: string) => require(p === './encoder' ? 'kafkajs/src/protocol/encoder.js' : p),
  { exports: {} },
) as Framing;

const size = Number(process.env.BENCH_FRAMING_BYTES ?? 200_000);
const body = Buffer.alloc(size, 7);

async function measure(name: string, frame: () => Promise<unknown>, n = 3_000): Promise<void> {
  for (let i = 0; i < 200; i++) await frame();
  const cpu = process.cpuUsage();
  const wall = performance.now();
  for (let i = 0; i < n; i++) await frame();
  const used = process.cpuUsage(cpu);
  const ms = performance.now() - wall;
  process.stdout.write(
    `${name.padEnd(16)} ${size} B: ${((used.user + used.system) / n).toFixed(1)} µs CPU, ${((ms * 1000) / n).toFixed(1)} µs wall per request\n`,
  );
}

const request = (encode: () => unknown) => ({ correlationId: 1, clientId: 'outboxd', request: { apiKey: 0, apiVersion: 3, encode } });

await measure('kafkajs framing', () =>
  theirs(
    request(async () => {
      const b = Buffer.allocUnsafe(size);
      body.copy(b);
      return { buf: b, buffer: b, size: () => size };
    }),
  ),
);
await measure('outboxd framing', () =>
  frameRequest(
    request(async () => {
      const b = Buffer.allocUnsafe(size + HEADROOM);
      body.copy(b, HEADROOM);
      return { buf: b, buffer: b.subarray(HEADROOM), size: () => size, headroom: HEADROOM };
    }) as Parameters<typeof frameRequest>[0],
  ),
);
