import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { COMPRESSIONS, checkCodec, codecOf, snappyCompress, snappyDecompress } from '../../src/sink/kafka/codecs.js';

const require = createRequire(import.meta.url);
const snappy = require('snappy') as { compressSync(b: Buffer): Buffer };

/** Bytes like a batch of records: JSON, multi-byte UTF-8, a run, a few random bytes. */
function sample(size: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0, n = 0; n < size; i++) {
    const json = Buffer.from(JSON.stringify({ i, city: ['Zürich', '東京', 'Łódź 🚚'][i % 3], pad: 'z'.repeat(i % 50) }));
    parts.push(json, Buffer.from([i & 0xff, (i * 7919) & 0xff, 0, 255]));
    n += json.length + 4;
  }
  return Buffer.concat(parts).subarray(0, size);
}

describe('Kafka compression codecs', () => {
  it.each(COMPRESSIONS.filter((c) => c !== 'none'))('%s round-trips batches from empty to 4 MiB', (name) => {
    const codec = codecOf(name) as NonNullable<ReturnType<typeof codecOf>>;
    expect(() => checkCodec(name)).not.toThrow();
    for (const size of [0, 1, 100, 70_000, 4 << 20]) {
      const data = sample(size);
      const packed = codec.compress(data);
      expect(codec.decompress(packed).equals(data)).toBe(true);
      if (size >= 70_000) expect(packed.length).toBeLessThan(size / 2);
    }
  });

  it('writes the formats Kafka’s clients read: gzip, xerial snappy, an LZ4 frame, a zstd frame', () => {
    const data = sample(10_000);
    const magic = (name: 'gzip' | 'snappy' | 'lz4' | 'zstd') => (codecOf(name) as { compress(b: Buffer): Buffer }).compress(data);
    expect(magic('gzip').subarray(0, 2).toString('hex')).toBe('1f8b');
    expect(magic('snappy').subarray(0, 16).toString('hex')).toBe('82534e41505059000000000100000001');
    expect(magic('lz4').readUInt32LE(0)).toBe(0x184d2204);
    // FLG: version 01, independent blocks (what Kafka's KafkaLZ4BlockInputStream requires).
    expect(magic('lz4')[4] as number & 0xe0).toBe(0x60);
    expect(magic('zstd').readUInt32LE(0)).toBe(0xfd2fb528);
  });

  it('reads raw snappy (as librdkafka writes it) and xerial snappy of several chunks', () => {
    const data = sample(100_000);
    expect(snappyDecompress(snappy.compressSync(data)).equals(data)).toBe(true);
    const header = snappyCompress(Buffer.alloc(0)).subarray(0, 16);
    const chunks = [data.subarray(0, 32_768), data.subarray(32_768, 65_536), data.subarray(65_536)].map((c) => {
      const packed = snappy.compressSync(c);
      const length = Buffer.alloc(4);
      length.writeUInt32BE(packed.length);
      return Buffer.concat([length, packed]);
    });
    expect(snappyDecompress(Buffer.concat([header, ...chunks])).equals(data)).toBe(true);
    expect(() => snappyDecompress(Buffer.concat([header, ...chunks]).subarray(0, 40))).toThrow();
  });
});
