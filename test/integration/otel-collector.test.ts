import { type ChildProcess, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { getFreePort } from '../harness/ports.js';
import { kafkaBrokers, pgUrl } from '../harness/services.js';
import { RelayProcess, TestDb, TopicReader, defer, kafkaConfig, until, writeConfig } from './support.js';

/**
 * The interop check of telemetry.traces: the real `outboxd` CLI (Kafka through the worker-thread
 * publisher, KAFKA_TEST_WORKERS) exports over OTLP/HTTP to a real OpenTelemetry Collector, built
 * from the Go module proxy by scripts/install-otelcol.sh (an OTLP receiver and a file exporter),
 * and the spans the Collector wrote to its file are checked against the row's traceparent and the
 * traceparent the consumer read.
 */

/** Where scripts/install-otelcol.sh puts the collector (scripts/prereqs.sh runs it). */
function otelcolBinary(): string {
  const bin = join(process.env.OUTBOXD_CACHE ?? join(homedir(), '.cache/outboxd'), 'bin/outboxd-otelcol');
  try {
    accessSync(bin, constants.X_OK);
  } catch {
    throw new Error(`the OpenTelemetry Collector is not installed at ${bin}: run \`bash scripts/install-otelcol.sh\` (needs Go)`);
  }
  return bin;
}

/** A span as the file exporter writes it (OTLP JSON: ids in hex, kind as a number). */
interface FileSpan {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: Array<{ key: string; value: { stringValue?: string; intValue?: string } }>;
  links?: Array<{ traceId: string; spanId: string }>;
}

function spansIn(file: string): Array<FileSpan & { service: string }> {
  if (!existsSync(file)) return [];
  const out: Array<FileSpan & { service: string }> = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    const doc = JSON.parse(line) as {
      resourceSpans: Array<{
        resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> };
        scopeSpans: Array<{ spans: FileSpan[] }>;
      }>;
    };
    for (const rs of doc.resourceSpans) {
      const service = rs.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue ?? '';
      for (const ss of rs.scopeSpans) for (const s of ss.spans) out.push({ ...s, service });
    }
  }
  return out;
}

const attr = (s: FileSpan, key: string) => {
  const v = s.attributes?.find((a) => a.key === key)?.value;
  return v?.stringValue ?? v?.intValue;
};

describe('OTLP export to a real OpenTelemetry Collector', () => {
  it('delivers the relay spans, children of the rows traceparent and parents of the consumers, to the Collector', async () => {
    const otelcol = otelcolBinary();
    await using db = await new TestDb(await pgUrl(17)).create();
    const brokers = await kafkaBrokers();
    await using reader = new TopicReader(brokers);
    const type = `collected_${db.name.slice(2, 8)}`;
    const topic = `outbox.event.${type}`;
    await reader.createTopics([topic]);

    const otlpPort = await getFreePort();
    await using collectorDir = await writeConfig(
      () => `receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:${otlpPort}
exporters:
  file:
    path: SPANS
    flush_interval: 100ms
service:
  telemetry:
    logs:
      level: warn
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [file]
`,
    );
    const spansFile = join(collectorDir.dir, 'spans.jsonl');
    writeFileSync(collectorDir.file, readFileSync(collectorDir.file, 'utf8').replace('SPANS', spansFile));
    let collectorLog = '';
    const collector: ChildProcess = spawn(otelcol, ['--config', collectorDir.file], { stdio: ['ignore', 'pipe', 'pipe'] });
    collector.stdout?.on('data', (d: Buffer) => {
      collectorLog += d.toString();
    });
    collector.stderr?.on('data', (d: Buffer) => {
      collectorLog += d.toString();
    });
    await using _collector = defer(() => collector.kill('SIGKILL'));
    await until(
      `the Collector listening on ${otlpPort} (${collectorLog.slice(-500)})`,
      async () => {
        if (collector.exitCode !== null) throw new Error(`the Collector exited with ${collector.exitCode}: ${collectorLog.slice(-2000)}`);
        const res = await fetch(`http://127.0.0.1:${otlpPort}/v1/traces`, { method: 'POST' }).catch(() => null);
        return res !== null;
      },
      30_000,
      100,
    );

    await using cfg = await writeConfig(
      kafkaConfig({
        pgUrl: db.url,
        slot: db.slot,
        brokers,
        extra: `telemetry:
  traces:
    enabled: true
    endpoint: http://127.0.0.1:${otlpPort}/v1/traces
    serviceName: outboxd-it
    batchDelay: 100ms
`,
      }),
    );
    const relay = new RelayProcess(cfg.file, cfg.port);
    await using _relay = defer(() => relay.kill('SIGKILL'));
    await relay.ready();
    await reader.start([topic]);

    const trace = '0af7651916cd43dd8448eb211c80319c';
    const parent = 'b7ad6b7169203331';
    const ids = ['6f9619ff-8b86-4d01-b42d-00c04fc964ff', '7f9619ff-8b86-4d01-b42d-00c04fc964ff'].map(
      (id) => `${id.slice(0, 24)}${db.name.slice(2, 14)}`,
    );
    await db.client.query(
      `INSERT INTO public.outbox (id, aggregatetype, aggregateid, type, payload, traceparent)
       VALUES ($1, $3, 'k1', 'Collected', '{}', $4), ($2, $3, 'k2', 'Collected', '{}', $4)`,
      [...ids, type, `00-${trace}-${parent}-01`],
    );
    await reader.waitForIds(ids);
    // A graceful stop exports what is finished before the process exits.
    relay.kill('SIGTERM');
    expect(await relay.exited).toBe(0);

    await until('the spans in the Collector file', async () => spansIn(spansFile).filter((s) => s.kind === 4).length >= 2, 30_000, 200);
    const spans = spansIn(spansFile);
    const creates = spans.filter((s) => s.kind === 4);
    expect(creates.map((s) => attr(s, 'messaging.message.id')).sort()).toEqual([...ids].sort());
    for (const span of creates) {
      const m = reader.messages.find((r) => r.headers.id === attr(span, 'messaging.message.id'));
      expect(span.service).toBe('outboxd-it');
      expect(span.name).toBe(`create ${topic}`);
      expect(span.traceId).toBe(trace);
      expect(span.parentSpanId).toBe(parent);
      expect(m?.headers.traceparent).toBe(`00-${trace}-${span.spanId}-01`);
      expect(attr(span, 'messaging.system')).toBe('kafka');
      expect(attr(span, 'messaging.destination.partition.id')).toBe(String(m?.partition));
    }
    // The send span (kind 3, CLIENT) links to both create spans.
    const links = spans.filter((s) => s.kind === 3).flatMap((s) => (s.links ?? []).map((l) => l.spanId));
    expect(links.sort()).toEqual(creates.map((s) => s.spanId).sort());
  });
});
