/**
 * The LZ4 frame Kafka's lz4 batches carry, written around a raw LZ4 block compressor
 * (https://github.com/lz4/lz4/blob/dev/doc/lz4_Frame_format.md):
 *
 *   magic 0x184D2204 (LE) · FLG · BD · HC · { block size (LE Int32, high bit: stored raw) · block }* · 0 (LE Int32)
 *
 * FLG 0x60: version 01, independent blocks (Kafka's KafkaLZ4BlockInputStream refuses dependent
 * ones), no block checksums, no content size, no content checksum: what lz4-napi's frame
 * encoder wrote, and what Java's reader, librdkafka and lz4_flex read. BD 0x40: blocks of at
 * most 64 KiB, the Java producer's size (lz4-napi chose 4 MiB past 64 KiB of input, so a reader
 * needed a 4 MiB buffer). HC is the second byte of XXH32(FLG, BD): the descriptor is fixed, so is
 * its checksum (test/unit/kafka-codecs.test.ts computes it).
 *
 * Why not lz4-napi's `compressFrameSync`: lz4_flex's frame encoder allocates its block buffers
 * (4 MiB in, 4 MiB out past 64 KiB of input) on every call, and the memory is faulted in again
 * and again: encoding a Produce request of 2,001 ~300 B records cost 2.9-3.3 µs a record with it,
 * 1.5-1.9 with 64 KiB blocks from the block compressor (docs/adr/0017).
 */

/** A raw LZ4 block compressor that prepends the input's length as a LE Int32 (lz4_flex's compress_prepend_size). */
export type Lz4BlockCompress = (data: Buffer) => Buffer;

const MAGIC = 0x184d2204;
const FLG = 0x60;
const BD = 0x40;
const HC = 0x82;
const BLOCK_MAX = 64 * 1024;
/** A block size's high bit: the block is stored uncompressed. */
const RAW_BLOCK = 0x80000000;

/** `data` as one LZ4 frame of independent blocks. */
export function lz4FrameCompress(data: Buffer, compressBlock: Lz4BlockCompress): Buffer {
  const blocks: Buffer[] = [];
  const raw: boolean[] = [];
  let size = 7 + 4;
  for (let at = 0; at < data.length; at += BLOCK_MAX) {
    const chunk = data.subarray(at, Math.min(data.length, at + BLOCK_MAX));
    const packed = compressBlock(chunk);
    // What does not shrink is stored as it is (the reader's block limit is the uncompressed size).
    const stored = packed.length - 4 >= chunk.length;
    const block = stored ? chunk : packed.subarray(4);
    blocks.push(block);
    raw.push(stored);
    size += 4 + block.length;
  }
  const out = Buffer.allocUnsafe(size);
  out.writeUInt32LE(MAGIC, 0);
  out[4] = FLG;
  out[5] = BD;
  out[6] = HC;
  let at = 7;
  for (let i = 0; i < blocks.length; i++) {
    const block = blocks[i] as Buffer;
    out.writeUInt32LE(raw[i] ? (block.length | RAW_BLOCK) >>> 0 : block.length, at);
    block.copy(out, at + 4);
    at += 4 + block.length;
  }
  out.writeUInt32LE(0, at);
  return out;
}
