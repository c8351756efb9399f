/**
 * Connection: owns one socket, its ByteReader, its child logger and its lifecycle.
 *
 *   accepted ─► handshake (negotiate) ─► transmission (TransmissionSession) ─► closed
 *                    │ ABORT / EOF / ProtocolError              │ DISC / EOF / bad magic
 *                    └──────────────────────────────────────────┴─► socket closed,
 *                                                                  handle.release()
 *
 * A misbehaving client only ever loses its own connection: every failure is caught
 * here, logged with the reason, and the socket is closed. Nothing is rethrown.
 *
 * STARTTLS swaps the socket: the raw one is paused before the ACK leaves (so the
 * ClientHello stays in the kernel for OpenSSL), then wrapped by tls.ts; from there on
 * every read, write and event goes through the TLS socket. The client's identity joins
 * the log context and selects the AccessView the handshake sees. The handshake timer
 * (handshake-timer.ts: idle gaps between options, and a total) covers everything before
 * transmission, TLS included.
 *
 * Closing is "input first": once the client said goodbye (ABORT, DISC, EOF) or broke the
 * protocol, nothing more is read (bytes still arriving are dropped and the socket paused,
 * so a flood cannot grow memory), replies already queued are flushed, then the socket
 * closes. A peer that stops taking those replies is cut off after LINGER_MS without
 * progress.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../logging.js';
import { AccessView } from './access-control.js';
import type { ServerSecurity } from './security.js';
import { isRenegotiationAttempt, upgradeToTls } from './tls.js';
import { ByteReader } from '../protocol/byte-reader.js';
import { ProtocolError } from '../protocol/nbd-errors.js';
import type { BufferPool } from './buffer-pool.js';
import type { ReadSink } from './shared-reads.js';
import type { ExportHandle, ExportProvider } from './exports.js';
import { negotiate, type NegotiatedSession } from './handshake.js';
import { HandshakeTimer } from './handshake-timer.js';
import { TransmissionSession } from './transmission.js';

export interface ConnectionServer {
  readonly provider: ExportProvider;
  readonly security?: ServerSecurity;
  isStopping(): boolean;
  /** Shared by every connection of the server: retained memory is bounded server-wide. */
  readonly pool?: BufferPool;
  /** Requests running on all of the server's connections. */
  readonly load?: { requests: number };
  /** Told about every finished request of every connection (metrics). */
  readonly onRequest?: (conn: Connection, cmd: number, length: number, startNs: bigint, errno: number) => void;
}

/** How long a closing connection may go without its queued replies making progress. */
export const LINGER_MS = 5000;

const NO_STATS = Object.freeze({ requests: 0, errors: 0, bytesRead: 0, bytesWritten: 0 });

export class Connection {
  log: Logger;
  /** Authenticated by TLS (certificate CN or PSK username); undefined without. */
  identity: string | undefined;
  private tlsActive = false;
  private view: ExportProvider | undefined;
  private handshakeTimer: HandshakeTimer | undefined;
  private readonly reader = new ByteReader();
  private session: TransmissionSession | undefined;
  private handle: ExportHandle | undefined;
  private destroyed = false;
  private readonly startedAt = performance.now();
  /** Export served once transmission began (for the closing log line). */
  exportName: string | undefined;
  /** Nothing more is read: incoming bytes are dropped. */
  private inputClosed = false;
  private lingerTimer: NodeJS.Timeout | undefined;
  /** When the connection was accepted. */
  readonly since = new Date();
  private resolveClosed!: () => void;
  /** Resolves once the socket is closed and the export handle released. */
  readonly closed = new Promise<void>((resolve) => (this.resolveClosed = resolve));

  constructor(
    private socket: Socket,
    readonly id: number,
    readonly peer: string,
    private readonly server: ConnectionServer,
    parentLog: Logger,
    /** Shared-read sockets deliver bytes through a sink instead of 'data' events. */
    setSink?: (sink: ReadSink) => void,
  ) {
    this.log = parentLog.child({ conn: id, peer });
    setSink?.({
      bytes: (chunk, transient) => this.onData(chunk, transient),
      directTarget: () => (this.inputClosed ? undefined : this.session?.directTarget()),
      direct: (n) => this.pump(n),
    });
    this.attach(socket, !setSink);
  }

  private attach(socket: Socket, dataEvents: boolean): void {
    if (dataEvents) socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('end', () => this.onEnd());
    // A refused TLS renegotiation (tls.ts destroys the socket) is an attack, not a hiccup.
    socket.on('error', (err) => (isRenegotiationAttempt(err) ? this.log.warn({ code: (err as NodeJS.ErrnoException).code }, 'closing connection: client tried to renegotiate TLS (refused)') : this.log.debug({ err }, 'socket error')));
    socket.on('close', () => void this.onClose());
    socket.on('drain', () => this.session?.onDrain());
  }

  /** The provider as this connection's identity may see it. */
  private provider(): ExportProvider {
    const access = this.server.security?.access;
    if (!access) return this.server.provider; // library use without security options
    this.view ??= new AccessView(this.server.provider, access, this.identity, this.log);
    return this.view;
  }

  /** Handshake hook: the ACK to STARTTLS is queued; run TLS and adopt the TLS socket. */
  private async startTls(): Promise<void> {
    const creds = this.server.security?.tls;
    if (!creds) throw new Error('STARTTLS accepted without TLS credentials');
    const raw = this.socket;
    raw.pause(); // the next bytes are the ClientHello: leave them to OpenSSL
    if (this.corked) this.uncork();
    await new Promise<void>((resolve) => raw.write(Buffer.alloc(0), () => resolve()));
    if (this.reader.length > 0) {
      // Plaintext sent after STARTTLS would be injected into the TLS session (CVE-2011-0411 class).
      throw new ProtocolError('NBD_ERR_TLS', `client sent ${this.reader.length} bytes after STARTTLS before the TLS handshake`);
    }
    let tlsSession;
    try {
      tlsSession = await upgradeToTls(raw, creds);
    } catch (err) {
      throw new ProtocolError('NBD_ERR_TLS', `TLS handshake failed: ${(err as Error).message}`);
    }
    const { socket, identity } = tlsSession;
    // The TLS socket owns the descriptor now; closing it must also release the raw one.
    socket.once('close', () => raw.destroy());
    this.socket = socket;
    this.tlsActive = true;
    this.identity = identity;
    this.view = undefined;
    this.attach(socket, true);
    this.log = this.log.child({ identity: identity ?? null });
    this.log.info({ protocol: tlsSession.protocol, cipher: tlsSession.cipher }, 'TLS established');
  }

  private startHandshakeTimer(): void {
    const ms = this.server.security?.handshakeTimeoutMs ?? 0;
    if (ms <= 0) return;
    this.handshakeTimer = new HandshakeTimer(ms, (expiry) => {
      this.log.warn({ seconds: expiry.seconds }, expiry.message);
      this.socket.destroy();
    });
  }

  /** Run the connection (resolves when the handshake phase is over). */
  async start(): Promise<void> {
    this.log.debug('connection accepted');
    this.startHandshakeTimer();
    let negotiated;
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the getters below run with `this` = the object literal
    const conn = this;
    try {
      negotiated = await negotiate({
        reader: this.reader,
        send: (buf) => (this.handshakeTimer?.answered(), this.write(buf)), // the client's turn again (handshake-timer.ts)
        get log() {
          return conn.log;
        },
        get provider() {
          return conn.provider();
        },
        get ctx() {
          return { connId: conn.id, peer: conn.peer, identity: conn.identity };
        },
        shuttingDown: () => this.server.isStopping(),
        optionReceived: () => this.handshakeTimer?.optionReceived(),
        tls: {
          mode: this.server.security?.tlsMode ?? 'off',
          active: () => this.tlsActive,
          start: () => this.startTls(),
        },
      });
    } catch (err) {
      this.fail(err, 'handshake');
      return;
    } finally {
      this.handshakeTimer?.stop();
    }
    if (!negotiated) {
      this.log.debug('client aborted the handshake');
      this.end();
      return;
    }
    this.handle = negotiated.handle;
    if (this.destroyed) {
      // The socket died while the export was being opened.
      void this.onClose();
      return;
    }
    this.startTransmission(negotiated);
  }

  /** The handshake chose an export: run its requests. */
  private startTransmission(negotiated: NegotiatedSession): void {
    this.log.debug({ export: negotiated.handle.name, structured: negotiated.structured, extended: negotiated.extended }, 'transmission phase');
    this.exportName = negotiated.handle.name;
    this.log.info({ export: negotiated.handle.name, readOnly: !negotiated.handle.capabilities.writable }, 'connection opened');
    const session = new TransmissionSession(
      {
        reader: this.reader,
        write: (buf, onWritten, alone) => this.write(buf, onWritten, alone),
        pause: () => this.socket.pause(),
        resume: () => this.socket.resume(),
        end: () => this.end(),
        stopInput: () => this.closeInput(),
        log: this.log,
      },
      negotiated,
      this.server.pool,
      this.server.load,
    );
    session.onFatal = (err) => this.fail(err, 'transmission');
    const onRequest = this.server.onRequest;
    if (onRequest) session.observer = (cmd, length, startNs, errno) => onRequest(this, cmd, length, startNs, errno);
    this.session = session;
    this.pump();
    if (this.reader.isEnded) this.onEnd();
  }

  /** Request counters (zero while still haggling). */
  get stats(): { readonly requests: number; readonly errors: number; readonly bytesRead: number; readonly bytesWritten: number } {
    return this.session?.stats ?? NO_STATS;
  }

  /** The device being served (undefined while haggling or after close). */
  get device(): ExportHandle['device'] | undefined {
    return this.handle?.device;
  }

  get requestsInFlight(): number {
    return this.session?.requestsInFlight ?? 0;
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
   * queue depth, no added latency beyond the current turn. `alone` (no other reply can
   * join this one: a QD1 or synchronous client): corking would only add a setImmediate and
   * a zero-timeout poll, so it leaves now (behind this turn's corked replies, if any).
   */
  private write(buf: Buffer, onWritten?: () => void, alone = false): boolean {
    if (this.destroyed || !this.socket.writable) {
      onWritten?.();
      return true;
    }
    if (!this.corked && !alone) {
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

  /** `transient`: a view of the server's shared read buffer (shared-reads.ts), valid only now. */
  private onData(chunk: Buffer, transient = false): void {
    if (this.inputClosed) return;
    this.reader.push(chunk, transient);
    try {
      if (this.session) this.pump();
    } finally {
      this.reader.settle();
    }
  }

  /** Parse what is buffered; `direct`: bytes just read straight into the session's directTarget(). */
  private pump(direct = 0): void {
    try {
      if (direct > 0) this.session!.directFilled(direct);
      else this.session!.pump();
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

  /** Read nothing more from this client (ABORT, DISC, protocol error): drop, pause. */
  private closeInput(): void {
    if (this.inputClosed) return;
    this.inputClosed = true;
    this.socket.pause();
    this.reader.skip(this.reader.length);
  }

  /** Close after the replies already queued are flushed (input closed first). */
  private end(): void {
    if (this.destroyed) return;
    this.closeInput();
    this.socket.end();
    this.socket.destroySoon();
    this.lingerTimer ??= this.lingerWatch();
  }

  /** Destroy the socket if its queued output stops moving for LINGER_MS. */
  private lingerWatch(): NodeJS.Timeout {
    let written = this.socket.bytesWritten;
    const timer = setInterval(() => {
      if (this.destroyed) return clearInterval(timer);
      const now = this.socket.bytesWritten;
      if (now === written) {
        this.log.debug('closing connection: peer stopped reading its last replies');
        clearInterval(timer);
        this.socket.destroy();
      }
      written = now;
    }, LINGER_MS);
    timer.unref();
    return timer;
  }

  private fail(err: unknown, phase: string): void {
    if (err instanceof ProtocolError && err.code === 'NBD_ERR_EOF') {
      this.log.debug(`client disconnected during ${phase}`);
    } else if (err instanceof ProtocolError) {
      this.log.warn({ code: err.code, reason: err.message }, `closing connection: protocol error during ${phase}`);
    } else {
      this.log.warn({ err }, `closing connection: unexpected error during ${phase}`);
      this.session?.close();
      this.socket.destroy();
      return;
    }
    // Replies already queued (e.g. pipelined options before EOF) still reach the client.
    this.session?.close();
    this.end();
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
    if (this.lingerTimer) clearInterval(this.lingerTimer);
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
