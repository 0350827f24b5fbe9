import type { StdoutSinkConfig } from '../config/config.js';
import { type PoisonError, SinkError } from '../errors.js';
import { STRUCTURED_CONTENT_TYPE } from '../outbox/cloudevents.js';
import type { DeadLetter, OutboxMessage, PublishOutcome, Sink } from '../interfaces.js';
import { type DeadLetterForm, deadLetterForms, formBytes } from './dead-letter.js';

/** A dead letter larger than this is written without its payload. */
const MAX_LINE_BYTES = 16 * 1024 * 1024;

/**
 * One JSON line per message on stdout. A batch is confirmed once the stream has taken it
 * (the write callback), which for a pipe means the bytes reached the kernel.
 * A JSON payload (or a structured CloudEvent) is embedded as JSON; a text payload as a string;
 * bytes as base64. With CloudEvents binary mode the attributes are `ce_` headers, as on Kafka.
 */
export class StdoutSink implements Sink {
  readonly type = 'stdout' as const;
  constructor(
    readonly cfg: StdoutSinkConfig,
    private readonly out: NodeJS.WritableStream = process.stdout,
  ) {
    // A closed pipe (EPIPE) also arrives as an 'error' event; the write callback reports it.
    out.on('error', () => undefined);
  }

  async connect(): Promise<void> {}

  check(): PoisonError | null {
    return null;
  }

  async publish(batch: readonly OutboxMessage[]): Promise<PublishOutcome> {
    let text = '';
    for (const m of batch) text += line(m.id, m.destination, m.key, m.type, m.headers, m.payload, m.contentType, null);
    await this.write(text);
    return { poisoned: [] };
  }

  async publishDeadLetter(letter: DeadLetter): Promise<void> {
    const forms = deadLetterForms(letter);
    const form = forms.find((f) => formBytes(f) <= MAX_LINE_BYTES) ?? (forms.at(-1) as DeadLetterForm);
    await this.write(
      line(letter.id, this.cfg.deadLetterDestination, letter.key, null, form.headers, form.body, letter.contentType, letter.error.message),
    );
  }

  async reset(): Promise<void> {}
  async close(): Promise<void> {}

  private write(text: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.out.write(text, (err) =>
        err ? reject(new SinkError('write', `writing to stdout failed: ${err.message}`, { retriable: false, cause: err })) : resolve(),
      );
    });
  }
}

function line(
  id: string | null,
  destination: string,
  key: string | null,
  type: string | null,
  headers: Readonly<Record<string, string>>,
  payload: string | Buffer,
  contentType: string,
  error: string | null,
): string {
  let body: string;
  if (typeof payload !== 'string') body = `{"base64":${JSON.stringify(payload.toString('base64'))}}`;
  else if ((contentType === 'application/json' || contentType === STRUCTURED_CONTENT_TYPE) && payload !== '') {
    // JSON text can hold raw newlines only between tokens, so folding them keeps it valid JSON.
    body = payload.includes('\n') ? payload.replace(/[\r\n]+/g, ' ') : payload;
  } else body = JSON.stringify(payload);
  const head = JSON.stringify({ id, destination, key, type, headers, ...(error ? { error } : {}) });
  return `${head.slice(0, -1)},"payload":${body}}\n`;
}
