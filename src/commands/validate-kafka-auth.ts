import type { KafkaSinkConfig } from '../config/config.js';
import { oneLine } from '../errors.js';
import { createLogger } from '../observability/logger.js';
import { tokenSource } from '../sink/kafka/auth.js';
import { createKafka, protocolErrorType } from '../sink/kafka/client.js';
import type { AddCheck } from './validate-check.js';

/** kafkajs errors that mean the SASL exchange itself failed, not the connection under it. */
const SASL_FAILURES = new Set(['KafkaJSSASLAuthenticationError']);
const SASL_TYPES = new Set(['SASL_AUTHENTICATION_FAILED', 'ILLEGAL_SASL_STATE', 'UNSUPPORTED_SASL_MECHANISM']);

function isSaslFailure(err: unknown): boolean {
  const type = protocolErrorType(err);
  if (type !== undefined && SASL_TYPES.has(type)) return true;
  for (let e = err as { name?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 8; depth++) {
    if (typeof e.name === 'string' && SASL_FAILURES.has(e.name)) return true;
    e = e.cause as typeof e;
  }
  return false;
}

/**
 * `validate --connect` for Kafka with SASL, one step at a time so the failing one is named:
 * 1. token fetch (oauthbearer, aws-msk-iam): a token from the identity provider or the signer;
 * 2. SASL handshake: an admin client connects and authenticates;
 * 3. authorisation: a metadata request, then InitProducerId for an idempotent producer, which
 *    needs IdempotentWrite on the cluster or Write on a topic (KIP-679).
 * Resolves true when every step passed (the broker check may follow), false after the first
 * failure, reported through `add`.
 */
export async function kafkaAuthChecks(cfg: KafkaSinkConfig, add: AddCheck): Promise<boolean> {
  const sasl = cfg.sasl;
  if (sasl === undefined) return true;
  const mechanism = sasl.mechanism.toUpperCase();
  const source = tokenSource(sasl);
  if (source) {
    try {
      const token = await source();
      const where =
        sasl.mechanism === 'oauthbearer'
          ? `from ${sasl.oauthbearer.tokenEndpoint}`
          : sasl.mechanism === 'aws-msk-iam'
            ? `signed for ${sasl.awsMskIam.region}`
            : '';
      add('kafka token fetch', 'ok', `a token ${where}, valid for ${Math.round((token.expiresAtMs - Date.now()) / 1000)} s`);
    } catch (err) {
      add('kafka token fetch', 'fail', oneLine(err));
      return false;
    }
  }
  const kafka = createKafka(cfg, createLogger('silent'));
  const admin = kafka.admin();
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1, allowAutoTopicCreation: false });
  try {
    try {
      await admin.connect();
      add('kafka SASL handshake', 'ok', `${mechanism} accepted by ${cfg.brokers.join(', ')}`);
    } catch (err) {
      add(
        'kafka SASL handshake',
        'fail',
        isSaslFailure(err)
          ? `the broker refused the ${mechanism} login: ${oneLine(err)}`
          : `no broker reached to authenticate with: ${oneLine(err)} — check sink.kafka.brokers and ssl`,
      );
      return false;
    }
    try {
      const cluster = await admin.describeCluster();
      await producer.connect();
      add('kafka authorisation', 'ok', `metadata and an idempotent producer id granted (cluster ${cluster.clusterId})`);
      return true;
    } catch (err) {
      const type = protocolErrorType(err);
      add(
        'kafka authorisation',
        'fail',
        type?.endsWith('_AUTHORIZATION_FAILED')
          ? `authenticated, but not authorised (${type}): grant the principal IdempotentWrite on the cluster or Write on the outbox topics`
          : oneLine(err),
      );
      return false;
    }
  } finally {
    await producer.disconnect().catch(() => undefined);
    await admin.disconnect().catch(() => undefined);
  }
}
