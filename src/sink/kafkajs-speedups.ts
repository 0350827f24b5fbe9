/**
 * Replaces, before kafkajs is loaded, one kafkajs function that costs the relay time in
 * proportion to the square of a send's messages: `groupMessagesPerPartition`, which copies the
 * partition's array once per message (1.3 s per million messages at 500 per send, in the CPU
 * profile of docs/benchmarks.md). The replacement returns the same object, in one pass.
 *
 * Import this module before anything imports kafkajs (a side-effect import at the top of the
 * modules that load it). If kafkajs was loaded first, nothing changes but the speed.
 */
import { Module, createRequire } from 'node:module';

type Grouper = (args: {
  topic: string;
  partitionMetadata: unknown[];
  messages: unknown[];
  partitioner: (a: { topic: string; partitionMetadata: unknown[]; message: unknown }) => number;
}) => Record<number, unknown[]>;

const grouper: Grouper = ({ topic, partitionMetadata, messages, partitioner }) => {
  const result: Record<number, unknown[]> = {};
  if (partitionMetadata.length === 0) return result;
  for (const message of messages) {
    const partition = partitioner({ topic, partitionMetadata, message });
    let list = result[partition];
    if (list === undefined) {
      list = [];
      result[partition] = list;
    }
    list.push(message);
  }
  return result;
};

const require = createRequire(import.meta.url);
const version = (require('kafkajs/package.json') as { version: string }).version;
if (version.startsWith('2.2.')) {
  const path = require.resolve('kafkajs/src/producer/groupMessagesPerPartition.js');
  if (require.cache[path] === undefined) {
    const m = new Module(path);
    m.filename = path;
    m.loaded = true;
    m.exports = grouper;
    require.cache[path] = m;
  }
}

export const GROUPER = grouper;
