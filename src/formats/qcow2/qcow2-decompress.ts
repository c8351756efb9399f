/**
 * Decompressing one qcow2 compressed cluster (docs/qcow2-format.md, "Compressed clusters").
 *
 * The bytes a compressed descriptor names run to the end of a 512-byte sector, so they may
 * end with bytes of the NEXT compressed cluster: the decoder must stop at the end of its
 * own stream. zlib's raw inflate does (Node discards input after the stream end); Node's
 * zstd decoder does not (it tries to read the trailing bytes as another frame and fails),
 * so the zstd frame's exact length is measured first (zstdFrameLength). The result must be
 * exactly one cluster: anything else is a corrupt image (EIO), never padded.
 *
 * Both decoders run on the libuv threadpool (the async zlib API), so a burst of 2 MiB
 * clusters does not stall the event loop.
 */
import zlib from 'node:zlib';
import { DeviceError } from '../../block/block-device.js';
import type { CompressionType } from './qcow2-header.js';

const ZSTD_MAGIC = 0xfd2fb528;

type Decoder = (input: Buffer, options: zlib.ZlibOptions, cb: (err: Error | null, out: Buffer) => void) => void;

/** Node's zstd (Node >= 22.15 / 23.8); undefined on older runtimes. */
function zstdDecoder(): Decoder | undefined {
  const z = zlib as unknown as { zstdDecompress?: Decoder };
  return z.zstdDecompress;
}

export async function decompressCluster(type: CompressionType, input: Buffer, clusterSize: number, where: string): Promise<Buffer> {
  let out: Buffer;
  try {
    if (type === 'zlib') {
      out = await run(zlib.inflateRaw as unknown as Decoder, input, { maxOutputLength: clusterSize, finishFlush: zlib.constants.Z_SYNC_FLUSH });
    } else {
      const decode = zstdDecoder();
      if (!decode) throw new DeviceError('ENOTSUP', `${where}: zstd-compressed cluster, but this Node.js has no zstd (needs Node >= 22.15)`);
      const len = zstdFrameLength(input);
      out = await run(decode, input.subarray(0, len), { maxOutputLength: clusterSize } as zlib.ZlibOptions);
    }
  } catch (err) {
    if (err instanceof DeviceError) throw err;
    throw new DeviceError('EIO', `${where}: cannot decompress ${type} cluster: ${(err as Error).message}`);
  }
  if (out.length !== clusterSize) throw new DeviceError('EIO', `${where}: ${type} cluster decompressed to ${out.length} bytes, not the cluster size ${clusterSize}`);
  return out;
}

function run(decode: Decoder, input: Buffer, options: zlib.ZlibOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => decode(input, options, (err, out) => (err ? reject(err) : resolve(out))));
}

/**
 * Length of the zstd frame at the start of `buf` (RFC 8878 section 3.1.1, summarised in
 * docs/qcow2-format.md): magic, frame header, blocks until the last one, optional checksum.
 */
export function zstdFrameLength(buf: Buffer): number {
  if (buf.length < 6 || buf.readUInt32LE(0) !== ZSTD_MAGIC) throw new Error('no zstd frame magic');
  const fhd = buf[4]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictFlag = fhd & 3;
  let at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][dictFlag]!;
  at += fcsFlag === 0 ? singleSegment : [0, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (at + 3 > buf.length) throw new Error('zstd frame runs past the compressed data');
    const header = buf[at]! | (buf[at + 1]! << 8) | (buf[at + 2]! << 16);
    const last = header & 1;
    const type = (header >> 1) & 3;
    const size = header >>> 3;
    if (type === 3) throw new Error('reserved zstd block type');
    at += 3 + (type === 1 ? 1 : size);
    if (last) break;
  }
  at += checksum ? 4 : 0;
  if (at > buf.length) throw new Error('zstd frame runs past the compressed data');
  return at;
}
