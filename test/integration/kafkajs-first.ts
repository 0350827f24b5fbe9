/**
 * Installs outboxd's kafkajs door (src/sink/kafka/kafkajs-internals.ts) in this test process
 * before the harness loads kafkajs for itself, so the relay run in-process here groups a send's
 * messages with outboxd's sendMessages and grouper, as a relay on its own always does. Import it first.
 */
import { installKafkajs } from '../../src/sink/kafka/kafkajs-internals.js';

installKafkajs();
