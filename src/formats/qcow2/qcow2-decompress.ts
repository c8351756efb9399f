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
 * Where it runs: clusters up to SYNC_MAX decode synchronously — measured on Node 24, one
 * async zlib call costs ~4x the decode of a 64 KiB cluster itself (it builds a stream per
 * call), and a 64 KiB decode takes ~0.1–0.3 ms, about what the event loop spends on one NBD
 * read. Larger clusters (up to 2 MiB, milliseconds each) go to the libuv threadpool (the
 * async API) so they never stall other connections. The output buffer is sized to the
 * cluster (chunkSize), which halves the cost of both paths (measured, Node's default is 16 KiB).
 */
import zlib from 'node:zlib';
import { DeviceError } from '../../block/block-device.js';
import type { CompressionType } from './qcow2-header.js';

const ZSTD_MAGIC = 0xfd2fb528;

/** Clusters up to this size are decoded synchronously (see the note above). */
export const SYNC_MAX = 64 * 1024;

type Decoder = (input: Buffer, options: zlib.ZlibOptions, cb: (err: Error | null, out: Buffer) => void) => void;
type SyncDecoder = (input: Buffer, options: zlib.ZlibOptions) => Buffer;

interface Codec {
  readonly decode: Decoder;
  readonly decodeSync: SyncDecoder;
}

const INFLATE: Codec = { decode: zlib.inflateRaw as unknown as Decoder, decodeSync: zlib.inflateRawSync as SyncDecoder };

/** Node's zstd (Node >= 22.15 / 23.8); undefined on older runtimes. */
function zstdCodec(): Codec | undefined {
  const z = zlib as unknown as { zstdDecompress?: Decoder; zstdDecompressSync?: SyncDecoder };
  return z.zstdDecompress && z.zstdDecompressSync ? { decode: z.zstdDecompress, decodeSync: z.zstdDecompressSync } : undefined;
}

export async function decompressCluster(type: CompressionType, input: Buffer, clusterSize: number, where: string): Promise<Buffer> {
  let out: Buffer;
  try {
    let codec = INFLATE;
    let data = input;
    if (type === 'zstd') {
      const zstd = zstdCodec();
      if (!zstd) throw new DeviceError('ENOTSUP', `${where}: zstd-compressed cluster, but this Node.js has no zstd (needs Node >= 22.15)`);
      codec = zstd;
      data = input.subarray(0, zstdFrameLength(input));
    }
    // maxOutputLength: a cluster that inflates past its size is corrupt (caught below).
    // chunkSize just above the cluster: one output buffer; exactly the cluster size would
    // make zlib ask for a second buffer to learn that the stream ended, then join them.
    const options = { chunkSize: clusterSize + 64, maxOutputLength: clusterSize };
    out = clusterSize <= SYNC_MAX ? codec.decodeSync(data, options) : await run(codec.decode, data, options);
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
