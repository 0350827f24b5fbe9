import { defineConfig } from 'vitest/config';

/**
 * Two projects: `unit` (pure logic, no services, runs in seconds) and `integration` (real
 * Postgres 15 and 17 and a real Kafka broker, started once by the global setup).
 * `npm test` runs both; `npx vitest run --project unit` runs the fast half.
 */
export default defineConfig({
  test: {
    // The services are shared; on 2 cores, files one at a time keep timings honest.
    fileParallelism: false,
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts', 'test/faults/**/*.test.ts', 'test/harness/**/*.test.ts'],
          globalSetup: ['test/harness/global-setup.ts'],
          testTimeout: 180_000,
          hookTimeout: 180_000,
          pool: 'forks',
        },
      },
    ],
  },
});
