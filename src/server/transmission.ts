/**
 * Transmission phase (docs/protocol.md#requests): the request pipeline of one connection.
 *
 *   socket chunks ─► ByteReader ─► pump(): header → validate → payload/drain → start()
 *                                                                       │ (concurrent)
 *   socket.write(one Buffer per reply) ◄── handler (handleRead, handleWrite, …) ◄─┘
 *
 * - Parsing is synchronous and push-driven (no promise per header); handlers run
 *   concurrently and complete out of order, each reply is ONE socket.write() of one
 *   Buffer (header and data together), so replies can never interleave.
 * - Backpressure: at most MAX_IN_FLIGHT requests (and MAX_IN_FLIGHT_BYTES of READ/WRITE
 *   data) per connection; beyond that, or while socket.write() reports a full buffer,
 *   the socket is paused and resumed on completion / 'drain'.
 * - Few copies, no fresh memory: READ takes one pooled Buffer for header(s)+data and the
 *   device reads into a subarray; a WRITE payload is copied once, as its bytes arrive, out
 *   of the shared read buffer (shared-reads.ts) into a pooled buffer.
 * - Errors: validation failures and device errors become NBD error replies (the real
 *   cause is logged at debug); only a ProtocolError (bad magic, an oversized extended payload)
 *   closes the connection.
 */
import type { Logger } from '../logging.js';
import type { BlockDevice } from '../block/block-device.js';
import { EXTENDED_REQUEST_HEADER_SIZE, MAX_PAYLOAD, NbdCmd, NbdCmdFlag, NbdError, NbdFlag, REQUEST_HEADER_SIZE, nameOf } from '../protocol/constants.js';
import type { ByteReader } from '../protocol/byte-reader.js';
import { decodeRequestHeader, encodeSimpleReply, type RequestHeader } from '../protocol/transmission-codec.js';
import { decodeExtendedRequestHeader } from '../protocol/extended-codec.js';
import { EXTENDED_CHUNKS, STRUCTURED_CHUNKS, type ChunkWriter } from '../protocol/chunk-writer.js';
import { ProtocolError } from '../protocol/nbd-errors.js';
import type { NegotiatedSession } from './handshake.js';
import { COMMAND_RULES, statusPayloadRequest, validateRequest, type ValidationContext } from './request-rules.js';
import { BufferPool, MIN_POOLED } from './buffer-pool.js';
import { DirtyBitmapView } from './dirty-bitmaps.js';
import { runRequest } from './transmission-commands.js';

/** Requests running at once on one connection (QEMU uses 16, the kernel up to 128 tags). */
export const MAX_IN_FLIGHT = 64;
/** READ/WRITE data held by running requests before reading pauses. */
export const MAX_IN_FLIGHT_BYTES = 64 * 1024 * 1024;
/** A WRITE payload missing at least this much may be read straight into (shared-reads.ts). */
export const DIRECT_READ_MIN = 64 * 1024;
/** Oversized WRITE payloads up to this are drained and answered EINVAL; beyond it we close. */
export const MAX_DRAIN = 256 * 1024 * 1024;
export { MAX_REPLY_EXTENTS, SPARSE_READ_MIN } from './transmission-commands.js';

/** What the session needs from its connection (socket control stays in connection.ts). */
export interface TransmissionIo {
  readonly reader: ByteReader;
  /**
   * Write one reply; returns false when the socket buffer is full (wait for drain).
   * `onWritten` runs once the bytes were handed to the kernel (or dropped): only then may
   * a pooled buffer be reused. `alone`: no other reply of this session can follow in the
   * current turn (its only running request is replying), so there is nothing to batch.
   */
  write(buf: Buffer, onWritten?: () => void, alone?: boolean): boolean;
  pause(): void;
  resume(): void;
  /** Close the connection (after everything written so far is flushed). */
  end(): void;
  /** Read nothing more (DISC): bytes still arriving are dropped, not buffered. */
  stopInput?(): void;
  readonly log: Logger;
}

/**
 * Told about every finished request (metrics, the admin API's per-connection counters):
 * command, payload length, start time (process.hrtime.bigint()) and NBD errno (0 = ok).
 * Requests refused before they start (validation, shutdown) report a start of 0n.
 */
export type RequestObserver = (cmd: number, length: number, startNs: bigint, errno: number) => void;

export class TransmissionSession {
  readonly device: BlockDevice;
  /** Set by the connection when someone observes requests; costs one clock read per request. */
  observer: RequestObserver | undefined;
  readonly structured: boolean;
  /** Extended headers: 32-byte requests, u64 lengths, PAYLOAD_LEN, extended reply chunks only. */
  readonly extended: boolean;
  /** How reply chunks are framed (structured or extended headers). */
  readonly chunks: ChunkWriter;
  readonly baseAllocationId: number;
  readonly allocationDepthId: number;
  /** The selected qemu:dirty-bitmap contexts, resolved against the device's chain per request. */
  readonly dirtyBitmaps: DirtyBitmapView;
  private readonly validation: ValidationContext;
  private readonly headerSize: number;
  /** Context ids negotiated for this export (what a BLOCK_STATUS payload may name). */
  private readonly selectedIds: readonly number[];
  private readonly traceEnabled: boolean;

  private inFlight = 0;
  private inFlightBytes = 0;
  /** A WRITE (or BLOCK_STATUS) whose payload is still arriving: copied into `buf` as its bytes come in. */
  private pendingWrite: { h: RequestHeader; buf: Buffer; pooled: Buffer | undefined; filled: number } | undefined;
  /** Payload bytes of a rejected WRITE still to be discarded. */
  private drainLeft = 0;
  private writeBlocked = false;
  private paused = false;
  /** DISC received, server stopping, or fatal error: read no more requests. */
  private stopReading = false;
  private shuttingDown = false;
  private ended = false;
  private idleWaiters: Array<() => void> = [];
  /** For the connection's closing log line (requests received, error replies, data bytes). */
  readonly stats = { requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0 };

  constructor(
    readonly io: TransmissionIo,
    session: NegotiatedSession,
    /** Large READ replies and WRITE payloads reuse buffers (see buffer-pool.ts); normally the server's. */
    readonly pool: BufferPool = new BufferPool(64 * 1024 * 1024),
    /** Requests running on all of the server's connections (the server's quiet probe). */
    private readonly load: { requests: number } = { requests: 0 },
  ) {
    this.device = session.handle.device;
    this.structured = session.structured;
    this.extended = session.extended;
    this.chunks = session.extended ? EXTENDED_CHUNKS : STRUCTURED_CHUNKS;
    this.headerSize = session.extended ? EXTENDED_REQUEST_HEADER_SIZE : REQUEST_HEADER_SIZE;
    this.baseAllocationId = session.baseAllocationId;
    this.allocationDepthId = session.allocationDepthId;
    this.dirtyBitmaps = new DirtyBitmapView(this.device, session.dirtyBitmaps);
    this.selectedIds = [
      ...[session.baseAllocationId, session.allocationDepthId].filter((id) => id !== 0),
      ...session.dirtyBitmaps.map((c) => c.id),
    ];
    this.validation = {
      size: session.handle.size,
      writable: session.handle.capabilities.writable,
      structured: session.structured,
      hasContexts: session.baseAllocationId !== 0 || session.allocationDepthId !== 0 || session.dirtyBitmaps.length > 0,
      extended: session.extended,
      statusPayload: (session.transmissionFlags & NbdFlag.BLOCK_STATUS_PAYLOAD) !== 0,
    };
    this.traceEnabled = io.log.isLevelEnabled('trace');
  }

  get requestsInFlight(): number {
    return this.inFlight;
  }

  /** Parse and start as many requests as the buffered bytes and the limits allow. */
  pump(): void {
    const reader = this.io.reader;
    while (!this.stopReading) {
      if (this.drainLeft > 0) {
        this.drainLeft -= reader.skip(this.drainLeft);
        if (this.drainLeft > 0) return;
        continue;
      }
      const pending = this.pendingWrite;
      if (pending) {
        pending.filled += reader.takeInto(pending.buf, pending.filled, pending.buf.length - pending.filled);
        if (pending.filled < pending.buf.length) return;
        this.pendingWrite = undefined;
        if (pending.h.type === NbdCmd.BLOCK_STATUS) this.startWithStatusPayload(pending.h, pending.buf);
        else this.start(pending.h, pending.buf, pending.pooled);
        continue;
      }
      if (!this.shuttingDown && (this.inFlight >= MAX_IN_FLIGHT || this.inFlightBytes >= MAX_IN_FLIGHT_BYTES || this.writeBlocked)) {
        this.pauseReading();
        return;
      }
      if (reader.length < this.headerSize) return;
      // A bad magic throws ProtocolError: the connection closes (caller catches).
      const header = reader.take(this.headerSize);
      this.dispatch(this.extended ? decodeExtendedRequestHeader(header) : decodeRequestHeader(header));
    }
  }

  /**
   * Where the next socket read may land directly: the missing part of a large WRITE
   * payload, when nothing is buffered ahead of it. It stays valid until the next read: with
   * nothing buffered, nothing but a read can fill or replace the pending payload.
   */
  directTarget(): Buffer | undefined {
    const p = this.pendingWrite;
    if (!p || this.stopReading || this.io.reader.length !== 0) return undefined;
    return p.buf.length - p.filled >= DIRECT_READ_MIN ? p.buf.subarray(p.filled) : undefined;
  }

  /** `n` bytes were read into the last directTarget(): account them, start what is complete. */
  directFilled(n: number): void {
    const p = this.pendingWrite;
    if (!p || p.filled + n > p.buf.length) throw new Error(`direct read of ${n} bytes without a matching WRITE payload`);
    p.filled += n;
    this.pump();
  }

  /** The socket accepted all buffered output again. */
  onDrain(): void {
    this.writeBlocked = false;
    this.maybeResume();
  }

  /** Server stop: new requests get ESHUTDOWN; resolves when nothing is in flight. */
  shutdown(): Promise<void> {
    this.shuttingDown = true;
    // Requests already buffered while reading was paused (backpressure) are answered
    // ESHUTDOWN now instead of being dropped when the connection closes: parse on,
    // ignoring the in-flight bounds (ESHUTDOWN replies start no device work).
    if (!this.stopReading) {
      if (this.paused) {
        this.paused = false;
        this.io.resume();
      }
      try {
        this.pump();
      } catch (err) {
        this.onFatal(err);
      }
    }
    return this.whenIdle();
  }

  /** Resolves when no request is running. */
  whenIdle(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  /** The client half-closed: parse nothing more, but still send replies to running requests. */
  stopInput(): void {
    this.stopReading = true;
  }

  /** The connection is gone: stop parsing (running handlers finish, replies are dropped). */
  close(): void {
    this.stopReading = true;
    this.ended = true;
  }

  private dispatch(h: RequestHeader): void {
    if (this.traceEnabled) this.io.log.trace({ cmd: nameOf(NbdCmd, h.type), flags: h.flags, offset: h.offset, length: h.length }, 'request');
    this.stats.requests++;
    if (h.type === NbdCmd.DISC) {
      // Finish what is running, then close; anything after DISC is ignored.
      this.stopReading = true;
      this.io.stopInput?.();
      this.io.log.debug('client sent DISC');
      void this.whenIdle().then(() => this.io.end());
      return;
    }
    const payload = this.payloadLength(h);
    const statusPayload = this.validation.statusPayload === true && h.type === NbdCmd.BLOCK_STATUS && (h.flags & NbdCmdFlag.PAYLOAD_LEN) !== 0;
    // A status payload carries the effect length: the request is validated once it is read.
    // One longer than 8 + 4 × (ids negotiated) cannot be valid: drained, not buffered.
    const rejection = !statusPayload
      ? validateRequest(h, this.validation)
      : payload > 8 + 4 * this.selectedIds.length
        ? { error: NbdError.EINVAL, message: `BLOCK_STATUS payload of ${payload} bytes names more contexts than the ${this.selectedIds.length} negotiated` }
        : undefined;
    if (rejection) return this.reject(h, rejection, payload);
    if (statusPayload && payload === 0 && !this.shuttingDown) return this.startWithStatusPayload(h, Buffer.alloc(0));
    if (this.shuttingDown) {
      this.discardPayload(payload);
      this.sendError(h, NbdError.ESHUTDOWN, 'server is shutting down');
      return;
    }
    if (payload > 0) {
      // pump() fills it and starts the request once the payload is complete.
      const pooled = h.length >= MIN_POOLED ? this.pool.acquire(h.length) : undefined;
      this.pendingWrite = { h, buf: pooled ? pooled.subarray(0, h.length) : Buffer.allocUnsafe(h.length), pooled, filled: 0 };
      return;
    }
    this.start(h, undefined);
  }

  /**
   * Payload bytes following this header. Compact headers: a WRITE's length. Extended headers:
   * `length` when PAYLOAD_LEN is set, else none — except WRITE, which always carries its data:
   * the specification makes PAYLOAD_LEN mandatory on WRITE, but QEMU 10's client omits it (and
   * QEMU's server reads the data anyway), so we do as QEMU's server does. A PAYLOAD_LEN payload
   * above the maximum payload closes the connection, as the specification recommends.
   */
  private payloadLength(h: RequestHeader): number {
    if (!this.extended || (h.flags & NbdCmdFlag.PAYLOAD_LEN) === 0) return COMMAND_RULES[h.type]?.hasPayload === true ? h.length : 0;
    if (h.length > MAX_PAYLOAD) {
      throw new ProtocolError('NBD_ERR_PAYLOAD_TOO_BIG', `${nameOf(NbdCmd, h.type)} payload of ${h.length} bytes exceeds the maximum payload ${MAX_PAYLOAD}`);
    }
    return h.length;
  }

  private reject(h: RequestHeader, rejection: { error: number; message: string }, payload: number): void {
    this.discardPayload(payload);
    this.io.log.debug({ cmd: nameOf(NbdCmd, h.type), offset: h.offset, length: h.length, error: rejection.message }, 'request rejected');
    this.sendError(h, rejection.error, rejection.message);
    this.observer?.(h.type, 0, 0n, rejection.error);
  }

  /** Extended headers, BLOCK_STATUS with a context-id payload: validate with its effect length, then run. */
  private startWithStatusPayload(h: RequestHeader, payload: Buffer): void {
    const request = statusPayloadRequest(h, payload, this.selectedIds);
    const rejection = 'error' in request ? request : validateRequest(request, this.validation);
    if (rejection) return this.reject(h, rejection, 0);
    this.start(request as RequestHeader, payload);
  }

  private discardPayload(length: number): void {
    if (length > MAX_DRAIN) {
      // Not worth reading: treat as abuse and close (the spec allows it above 32 MiB).
      this.io.log.warn({ length }, 'WRITE payload too large to drain; closing connection');
      this.stopReading = true;
      this.io.end();
      return;
    }
    this.drainLeft = length;
  }

  private start(h: RequestHeader, payload: Buffer | undefined, pooled?: Buffer): void {
    this.inFlight++;
    this.load.requests++;
    const bytes = h.type === NbdCmd.READ || h.type === NbdCmd.WRITE ? h.length : 0;
    this.inFlightBytes += bytes;
    if (h.type === NbdCmd.READ) this.stats.bytesRead += bytes;
    else if (h.type === NbdCmd.WRITE) this.stats.bytesWritten += bytes;
    void runRequest(this, h, payload, bytes, pooled);
  }

  /** Called by runRequest when a request has replied (or failed). */
  complete(bytes: number): void {
    this.inFlight--;
    this.load.requests--;
    this.inFlightBytes -= bytes;
    if (this.inFlight === 0 && this.idleWaiters.length > 0) {
      const waiters = this.idleWaiters;
      this.idleWaiters = [];
      for (const w of waiters) w();
    }
    this.maybeResume();
  }

  send(buf: Buffer, onWritten?: () => void): void {
    if (this.ended) {
      onWritten?.();
      return;
    }
    // Replies are sent before complete(): inFlight 1 is this request alone. Requests
    // parsed from one socket read are all started before a handler that awaits the device
    // replies, so 1 means no other reply can join this one in this turn. (A reply sent
    // synchronously while parsing, e.g. a zero-length READ, may go out uncorked and a later
    // one of the same read corked: order is the socket's either way, only batching differs.)
    if (!this.io.write(buf, onWritten, this.inFlight === 1)) this.writeBlocked = true;
  }

  /** A reply buffer of `size` bytes; pooled when large. Pass the result to sendReply(). */
  replyBuffer(size: number): { buf: Buffer; backing?: Buffer } {
    if (size < MIN_POOLED) return { buf: Buffer.allocUnsafe(size) };
    const backing = this.pool.acquire(size);
    return { buf: backing.subarray(0, size), backing };
  }

  /** Send a buffer from replyBuffer(); its backing returns to the pool once written. */
  sendReply(reply: { buf: Buffer; backing?: Buffer }): void {
    const backing = reply.backing;
    this.send(reply.buf, backing ? () => this.pool.release(backing) : undefined);
  }

  sendError(h: RequestHeader, error: number, message: string, offset?: number): void {
    this.stats.errors++;
    if (this.structured) this.send(this.chunks.error(h, error, message, offset));
    else this.send(encodeSimpleReply(error, h.cookieHi, h.cookieLo));
  }

  /** Success without data: a simple reply, except with extended headers (never simple replies). */
  sendOk(h: RequestHeader): void {
    this.send(this.extended ? this.chunks.none(h) : encodeSimpleReply(0, h.cookieHi, h.cookieLo));
  }

  private pauseReading(): void {
    if (!this.paused) {
      this.paused = true;
      this.io.pause();
    }
  }

  private maybeResume(): void {
    if (this.stopReading) return;
    if (this.inFlight >= MAX_IN_FLIGHT || this.inFlightBytes >= MAX_IN_FLIGHT_BYTES || this.writeBlocked) return;
    if (this.paused) {
      this.paused = false;
      this.io.resume();
    }
    // Requests may already be buffered: parse them now rather than on the next chunk.
    if (this.io.reader.length > 0) {
      try {
        this.pump();
      } catch (err) {
        this.onFatal(err);
      }
    }
  }

  /** Set by the connection: called when pump() hits a protocol error outside a data event. */
  onFatal: (err: unknown) => void = () => this.io.end();
}
