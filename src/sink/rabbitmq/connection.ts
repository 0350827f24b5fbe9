import amqp from 'amqplib';
import type { RabbitMqSinkConfig } from '../../config/config.js';
import { SinkError } from '../../errors.js';
import { classifyAmqpError } from './errors.js';

/**
 * Opens the AMQP connection of sink.rabbitmq: the URL with its heartbeat, TLS files, the EXTERNAL
 * mechanism when asked. Rejects with a classified SinkError.
 */
export async function connectAmqp(cfg: RabbitMqSinkConfig): Promise<amqp.ChannelModel> {
  const url = new URL(cfg.url);
  if (!url.searchParams.has('heartbeat')) url.searchParams.set('heartbeat', String(cfg.heartbeatSeconds));
  const tls = cfg.tls;
  try {
    return await amqp.connect(url.toString(), {
      timeout: cfg.connectionTimeoutMs,
      ...(tls
        ? {
            ca: tls.ca,
            cert: tls.cert,
            key: tls.key,
            passphrase: tls.passphrase,
            rejectUnauthorized: tls.rejectUnauthorized,
            servername: tls.servername,
          }
        : {}),
      // EXTERNAL: the broker takes the identity from the TLS client certificate.
      ...(cfg.authMechanism === 'external' ? { credentials: amqp.credentials.external() } : {}),
      clientProperties: { connection_name: 'outboxd' },
    });
  } catch (err) {
    throw classifyAmqpError(err, 'connecting to RabbitMQ', decodeURIComponent(url.pathname.slice(1)) || '/');
  }
}

/** Checks (or, with sink.rabbitmq.declare, declares) an exchange; a SinkError that says what to fix. */
export async function checkExchange(ch: amqp.ConfirmChannel, cfg: RabbitMqSinkConfig, name: string, type: string): Promise<void> {
  try {
    if (cfg.declare) await ch.assertExchange(name, type, { durable: true });
    else await ch.checkExchange(name);
  } catch (err) {
    const code = (err as { code?: number }).code;
    if (code === 404) {
      throw new SinkError('exchange_missing', `RabbitMQ exchange "${name}" does not exist; create it or set sink.rabbitmq.declare: true`, {
        retriable: false,
        cause: err,
      });
    }
    if (code === 406) {
      throw new SinkError(
        'exchange_mismatch',
        `RabbitMQ exchange "${name}" exists with other settings (wanted a durable ${type} exchange)`,
        {
          retriable: false,
          cause: err,
        },
      );
    }
    if (code === 503 || /x-consistent-hash/.test(String((err as Error).message))) {
      throw new SinkError(
        'exchange_type',
        `RabbitMQ cannot declare a ${type} exchange: is the rabbitmq_consistent_hash_exchange plugin enabled?`,
        {
          retriable: false,
          cause: err,
        },
      );
    }
    throw err;
  }
}

/**
 * The channel a message goes over when the sink publishes over `n` channels: a hash (FNV-1a) of
 * its shard key mod `n`. The same key always takes the same channel, and one channel keeps its
 * messages in order, so per-key order holds.
 */
export function laneOf(key: string, n: number): number {
  if (n <= 1) return 0;
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) {
    h ^= key.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return (h >>> 0) % n;
}
