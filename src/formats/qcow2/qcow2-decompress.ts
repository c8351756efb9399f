/**
 * Decompressing one qcow2 compressed cluster (docs/qcow2-format.md, "Compressed clusters").
 *
 * The bytes a compressed descriptor names run to the end of a 512-byte sector, so they may
 * end with bytes of the NEXT compressed cluster: the decoder must stop at the end of its
 * own stream. zlib's raw inflate does; Node's zstd decoder does not (it tries to read the
 * trailing bytes as another frame and fails), so the zstd frame's exact length is measured
 * first (zstdFrameLength). The result must fill exactly one cluster: a stream that ends
 * early is a corrupt image (EIO), never padded. A deflate stream that would run past the
 * cluster is cut at the cluster's end, as QEMU does (it accepts Z_BUF_ERROR once the output
 * is full, because the input's length is only known to a sector); a zstd frame with input
 * left over is EIO, as in QEMU.
 *
 * Where and how it runs (docs/qcow2-format.md "Performance"):
 *   - clusters up to SYNC_MAX decode synchronously on ONE decoder per device, kept open
 *     and reset between clusters, writing straight into the caller's buffer. Node's
 *     one-shot inflateRawSync builds a zlib stream (and its 32 KiB window, reported to V8
 *     as external memory) and a fresh output buffer per call: measured ~3x the CPU of the
 *     decode itself for a 64 KiB cluster, most of it garbage collection. The reused decoder
 *     drives the stream's native handle (writeSync/reset, the calls Node's own sync path
 *     makes); on a Node whose zlib lacks them the one-shot API is used instead.
 *   - larger clusters (up to 2 MiB, milliseconds each) go to the libuv threadpool (the
 *     async API) so they never stall other connections.
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
  /** A streaming decoder object (zlib.InflateRaw / ZstdDecompress) for the reused path. */
  readonly stream: () => zlib.Zlib;
}

const INFLATE: Codec = { decode: zlib.inflateRaw as unknown as Decoder, decodeSync: zlib.inflateRawSync as SyncDecoder, stream: () => zlib.createInflateRaw({ chunkSize: 64 }) };

/** Node's zstd (Node >= 22.15 / 23.8); undefined on older runtimes. */
function zstdCodec(): Codec | undefined {
  const z = zlib as unknown as { zstdDecompress?: Decoder; zstdDecompressSync?: SyncDecoder; createZstdDecompress?: (o: object) => zlib.Zlib };
  if (!z.zstdDecompress || !z.zstdDecompressSync || !z.createZstdDecompress) return undefined;
  const create = z.createZstdDecompress;
  return { decode: z.zstdDecompress, decodeSync: z.zstdDecompressSync, stream: () => create({ chunkSize: 64 }) };
}

/** The native handle behind a Node zlib stream, as Node's own synchronous path drives it. */
interface NativeHandle {
  writeSync(flush: number, input: Buffer, inOff: number, inLen: number, out: Buffer, outOff: number, outLen: number): void;
  reset(): void;
  close(): void;
  onerror: (errno: number, code: string, message: string) => void;
}

/** One open decoder: reused for every cluster of a device until it reports an error. */
interface Engine {
  readonly handle: NativeHandle;
  /** [avail_out, avail_in] after each writeSync (the stream's _writeState). */
  readonly state: Uint32Array;
  readonly finish: number;
  error: string | undefined;
}

function openEngine(codec: Codec): Engine | undefined {
  const stream = codec.stream() as unknown as { _handle?: Partial<NativeHandle>; _writeState?: unknown; _finishFlushFlag?: unknown; close(): void };
  const handle = stream._handle;
  const state = stream._writeState;
  if (!handle || typeof handle.writeSync !== 'function' || typeof handle.reset !== 'function' || !(state instanceof Uint32Array) || typeof stream._finishFlushFlag !== 'number') {
    stream.close();
    return undefined;
  }
  const engine: Engine = { handle: handle as NativeHandle, state, finish: stream._finishFlushFlag, error: undefined };
  // Errors are reported synchronously through onerror; ours records them instead of
  // destroying the stream (the engine is dropped and a new one opened).
  engine.handle.onerror = (_errno, code, message) => {
    engine.error = message || code || 'decoder error';
  };
  return engine;
}

/** Decodes the compressed clusters of one image (one per device: its engine is reused). */
export class ClusterDecoder {
  private readonly codec: Codec | undefined;
  private engine: Engine | undefined;
  /** false once the runtime's streams turned out not to offer the reused path. */
  private reusable = true;

  constructor(
    readonly type: CompressionType,
    readonly clusterSize: number,
  ) {
    this.codec = type === 'zstd' ? zstdCodec() : INFLATE;
  }

  /** Whether clusters are decoded by a reused engine (tests and the performance notes). */
  get reusesEngine(): boolean {
    return this.engine !== undefined;
  }

  /** True when decode() finishes synchronously (clusters up to SYNC_MAX): decodeNow applies. */
  get synchronous(): boolean {
    return this.clusterSize <= SYNC_MAX;
  }

  /** Decode the cluster whose compressed bytes start `input` into `out` (clusterSize bytes). */
  async decode(input: Buffer, out: Buffer, where: string): Promise<void> {
    if (this.synchronous) return this.decodeNow(input, out, where);
    const codec = this.codecOrThrow(where);
    const data = this.frame(input, where);
    let got: Buffer;
    try {
      const options = { chunkSize: this.clusterSize + 64, maxOutputLength: this.clusterSize };
      got = await run(codec.decode, data, options);
    } catch (err) {
      throw new DeviceError('EIO', `${where}: cannot decompress ${this.type} cluster: ${(err as Error).message}`);
    }
    this.accept(got, out, where);
  }

  /** decode() on the calling stack, for clusters up to SYNC_MAX (`synchronous`). */
  decodeNow(input: Buffer, out: Buffer, where: string): void {
    const codec = this.codecOrThrow(where);
    const data = this.frame(input, where);
    if (this.reusable) {
      this.engine ??= openEngine(codec);
      if (this.engine) return this.decodeReused(this.engine, data, out, where);
      this.reusable = false;
    }
    let got: Buffer;
    try {
      // maxOutputLength: a cluster that inflates past its size is corrupt (caught below).
      // chunkSize just above the cluster: one output buffer; exactly the cluster size would
      // make zlib ask for a second buffer to learn that the stream ended, then join them.
      const options = { chunkSize: this.clusterSize + 64, maxOutputLength: this.clusterSize };
      got = codec.decodeSync(data, options);
    } catch (err) {
      throw new DeviceError('EIO', `${where}: cannot decompress ${this.type} cluster: ${(err as Error).message}`);
    }
    this.accept(got, out, where);
  }

  private codecOrThrow(where: string): Codec {
    if (!this.codec) throw new DeviceError('ENOTSUP', `${where}: zstd-compressed cluster, but this Node.js has no zstd (needs Node >= 22.15)`);
    return this.codec;
  }

  /** The compressed stream itself: zstd's frame measured, deflate's bytes as they are. */
  private frame(input: Buffer, where: string): Buffer {
    if (this.type !== 'zstd') return input;
    try {
      return input.subarray(0, zstdFrameLength(input));
    } catch (err) {
      throw new DeviceError('EIO', `${where}: cannot decompress ${this.type} cluster: ${(err as Error).message}`);
    }
  }

  /** A one-shot result: exactly one cluster, copied into `out`. */
  private accept(got: Buffer, out: Buffer, where: string): void {
    if (got.length !== this.clusterSize) throw new DeviceError('EIO', `${where}: ${this.type} cluster decompressed to ${got.length} bytes, not the cluster size ${this.clusterSize}`);
    got.copy(out);
  }

  private decodeReused(e: Engine, data: Buffer, out: Buffer, where: string): void {
    e.handle.writeSync(e.finish, data, 0, data.length, out, 0, this.clusterSize);
    const [availOut, availIn] = [e.state[0]!, e.state[1]!];
    if (e.error !== undefined) {
      // A stream that reported an error is not reused.
      this.drop();
      throw new DeviceError('EIO', `${where}: cannot decompress ${this.type} cluster: ${e.error}`);
    }
    e.handle.reset();
    if (availOut !== 0) throw new DeviceError('EIO', `${where}: ${this.type} cluster decompressed to ${this.clusterSize - availOut} bytes, not the cluster size ${this.clusterSize}`);
    if (this.type === 'zstd' && availIn !== 0) throw new DeviceError('EIO', `${where}: zstd cluster decompresses past the cluster size ${this.clusterSize}`);
  }

  /** Release the engine (device close; after an error). */
  drop(): void {
    const e = this.engine;
    this.engine = undefined;
    try {
      e?.handle.close();
    } catch {
      // Already closed by the error path: nothing left to release.
    }
  }
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
