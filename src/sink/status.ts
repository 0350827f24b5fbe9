/** How a sink reports its broker's health to the relay (metrics and `/readyz`). */
export interface SinkStatus {
  connection(up: boolean): void;
  /** The broker asked us to stop publishing (RabbitMQ resource alarm). */
  blocked(blocked: boolean): void;
  /** Exactly-once: a Kafka transaction ended. */
  transaction(result: 'committed' | 'aborted'): void;
  /** Exactly-once: another producer took our transactional id. */
  fenced(): void;
}
