/**
 * Connection: owns one socket, its ByteReader, its child logger and its lifecycle.
 *
 *   accepted ─► handshake (negotiate) ─► transmission (TransmissionSession) ─► closed
 *                    │ ABORT / EOF / ProtocolError              │ DISC / EOF / bad magic
 *                    └──────────────────────────────────────────┴─► socket closed,
 *                                                                  handle.release()
 *
 * A misbehaving client only ever loses its own connection: every failure is caught
 * here, logged with the reason, and the socket is destroyed. Nothing is rethrown.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../logging.js';
import { ByteReader } from '../protocol/byte-reader.js';
import { ProtocolError } from '../protocol/nbd-errors.js';
import type { ExportHandle, ExportProvider } from './exports.js';
import { negotiate } from './handshake.js';
import { TransmissionSession } from './transmission.js';

export interface ConnectionServer {
  readonly provider: ExportProvider;
  isStopping(): boolean;
}

export class Connection {
  readonly log: Logger;
  private readonly reader = new ByteReader();
  private session: TransmissionSession | undefined;
  private handle: ExportHandle | undefined;
  private destroyed = false;
  private readonly startedAt = performance.now();
  /** Export served once transmission began (for the closing log line). */
  private exportName: string | undefined;
  private resolveClosed!: () => void;
  /** Resolves once the socket is closed and the export handle released. */
  readonly closed = new Promise<void>((resolve) => (this.resolveClosed = resolve));

  constructor(
    private readonly socket: Socket,
    readonly id: number,
    readonly peer: string,
    private readonly server: ConnectionServer,
    parentLog: Logger,
    /** Arena-read sockets deliver bytes through a sink instead of 'data' events. */
    setSink?: (sink: (bytes: Buffer) => void) => void,
  ) {
    this.log = parentLog.child({ conn: id, peer });
    if (setSink) setSink((chunk) => this.onData(chunk));
    else socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    socket.on('error', (err) => this.log.debug({ err }, 'socket error'));
    socket.on('close', () => void this.onClose());
    socket.on('drain', () => this.session?.onDrain());
  }

  /** Run the connection (resolves when the handshake phase is over). */
  async start(): Promise<void> {
    this.log.debug('connection accepted');
    let negotiated;
    try {
      negotiated = await negotiate({
        reader: this.reader,
        send: (buf) => this.write(buf),
        log: this.log,
        provider: this.server.provider,
        ctx: { connId: this.id, peer: this.peer },
        shuttingDown: () => this.server.isStopping(),
      });
    } catch (err) {
      this.fail(err, 'handshake');
      return;
    }
    if (!negotiated) {
      this.log.debug('client aborted the handshake');
      this.socket.end();
      return;
    }
    this.handle = negotiated.handle;
    if (this.destroyed) {
      // The socket died while the export was being opened.
      void this.onClose();
      return;
    }
    this.log.debug({ export: negotiated.handle.name, structured: negotiated.structured }, 'transmission phase');
    this.exportName = negotiated.handle.name;
    this.log.info({ export: negotiated.handle.name, readOnly: !negotiated.handle.capabilities.writable }, 'connection opened');
    const session = new TransmissionSession(
      {
        reader: this.reader,
        write: (buf, onWritten) => this.write(buf, onWritten),
        pause: () => this.socket.pause(),
        resume: () => this.socket.resume(),
        end: () => this.end(),
        log: this.log,
      },
      negotiated,
    );
    session.onFatal = (err) => this.fail(err, 'transmission');
    this.session = session;
    this.pump();
    if (this.reader.isEnded) this.onEnd();
  }

  /** Server stop: finish running requests (new ones get ESHUTDOWN), then close. */
  async shutdown(): Promise<void> {
    const session = this.session;
    if (!session) {
      // Still haggling: no export data is at risk, just close.
      this.socket.destroy();
      return this.closed;
    }
    await session.shutdown();
    this.end();
    return this.closed;
  }

  /** Hard close (shutdown grace expired). */
  destroy(): void {
    this.socket.destroy();
  }

  /**
   * Replies completing in the same event-loop turn (e.g. a batch of threadpool reads)
   * are corked and leave in one writev() at setImmediate: far fewer syscalls at high
   * queue depth, no added latency beyond the current turn.
   */
  private write(buf: Buffer, onWritten?: () => void): boolean {
    if (this.destroyed || !this.socket.writable) {
      onWritten?.();
      return true;
    }
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(this.uncork);
    }
    return onWritten ? this.socket.write(buf, onWritten) : this.socket.write(buf);
  }

  private corked = false;
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private onData(chunk: Buffer): void {
    this.reader.push(chunk);
    if (this.session) this.pump();
  }

  private pump(): void {
    try {
      this.session!.pump();
    } catch (err) {
      this.fail(err, 'transmission');
    }
  }

  private onEnd(): void {
    this.reader.end();
    const session = this.session;
    if (session) {
      // Client half-closed without DISC: finish running requests, then close.
      session.stopInput();
      void session.whenIdle().then(() => this.end());
    }
  }

  private end(): void {
    if (this.destroyed) return;
    this.socket.end();
    this.socket.destroySoon();
  }

  private fail(err: unknown, phase: string): void {
    if (err instanceof ProtocolError && err.code === 'NBD_ERR_EOF') {
      this.log.debug(`client disconnected during ${phase}`);
    } else if (err instanceof ProtocolError) {
      this.log.warn({ code: err.code, reason: err.message }, `closing connection: protocol error during ${phase}`);
    } else {
      this.log.warn({ err }, `closing connection: unexpected error during ${phase}`);
    }
    this.session?.close();
    this.socket.destroy();
  }

  /** info for connections that served an export (with totals), debug for the rest (LIST, probes). */
  private logClosed(session: TransmissionSession | undefined): void {
    const durationMs = Math.round(performance.now() - this.startedAt);
    if (this.exportName === undefined || !session) {
      this.log.debug({ durationMs }, 'connection closed');
      return;
    }
    this.log.info({ export: this.exportName, durationMs, ...session.stats }, 'connection closed');
  }

  private async onClose(): Promise<void> {
    if (this.destroyed && !this.handle) return;
    const first = !this.destroyed;
    this.destroyed = true;
    this.reader.end(); // wakes a handshake waiting for bytes that will never come
    const session = this.session;
    session?.close();
    if (first) this.logClosed(session);
    const handle = this.handle;
    if (!handle) {
      if (first) this.resolveClosed();
      return;
    }
    this.handle = undefined;
    try {
      if (session) await session.whenIdle();
      await handle.release();
    } catch (err) {
      this.log.error({ err }, 'releasing the export failed');
    }
    this.resolveClosed();
  }
}
