/**
 * NbdServer: listeners (TCP or Unix socket), accepted connections, graceful stop.
 *
 *   listen({host, port} | {path} | {fd}) ─► net.Server ─► Connection per socket
 *   ({fd}: an already-listening socket inherited from systemd socket activation, TCP or
 *   Unix; the listener owns it from then on and closes it on stop())
 *   stop(): close listeners ─► each connection: running requests finish, new ones get
 *           ESHUTDOWN ─► sockets closed ─► provider.close() (flush + close every device)
 *
 * Memory: one BufferPool serves every connection and every socket reads into one shared
 * buffer (shared-reads.ts); a sweep every IDLE_SWEEP_MS gives the pool's buffers back once
 * nobody asked for one a while. Which read path is in use is logged at the first listen()
 * and counted per connection (readPathCounts(): test/server/shared-reads.test.ts fails when
 * the fast path is not active). Descriptors: see fd-limit.ts.
 *
 * No state at module level: several servers can live in one process (tests, library use).
 */
import net from 'node:net';
import { SHARED_READ_SIZE, sharedReadSocket, sharedReadsSupported } from './shared-reads.js';
import { lstat, unlink } from 'node:fs/promises';
import type { Logger } from '../logging.js';
import { BufferPool } from './buffer-pool.js';
import { Connection, type ConnectionServer } from './connection.js';
import { connectionBudget, rateLimited } from './fd-limit.js';
import { idleReclaimer } from './idle-gc.js';
import type { ExportProvider } from './exports.js';
import type { FileIo } from '../block/file-io.js';
import type { ServerSecurity } from './security.js';

/** Observes every finished request: (connection, command, length, start ns, NBD errno). */
export type ServerRequestListener = (conn: Connection, cmd: number, length: number, startNs: bigint, errno: number) => void;

export type ListenEndpoint =
  | { readonly host: string; readonly port: number }
  | { readonly path: string }
  | { readonly fd: number };

export interface ListenAddress {
  readonly host?: string;
  readonly port?: number;
  readonly path?: string;
  /** An inherited Unix socket whose path Node cannot tell (it did not bind it). */
  readonly fd?: number;
}

export interface NbdServerOptions {
  readonly provider: ExportProvider;
  readonly log: Logger;
  /** How long stop() waits for connections to finish before destroying them (ms). */
  readonly stopGraceMs?: number;
  /**
   * The devices' FileIo: its policy says whether sockets read into one shared buffer
   * (IoPolicy.sharedReads; without an io: yes), and it is told when the server is quiet
   * (FileIo.setQuietProbe).
   */
  readonly io?: FileIo;
  /** TLS, access rules and limits (security.ts); absent = open server, no limits. */
  readonly security?: ServerSecurity;
  /** Connections per listener (default: what the descriptor limit allows, see fd-limit.ts). */
  readonly maxConnections?: number;
  /**
   * A full garbage collection, run after the idle sweep released memory (idle-gc.ts).
   * The CLI passes exposeGc()'s function; without one the sweep only trims malloc (the
   * server never sets process-wide V8 flags itself).
   */
  readonly gc?: () => void;
}

/** How accepted sockets read (shared-reads.ts): the fast path, or Node's default stream reads. */
export type ReadPath = 'shared' | 'stream';

/** The pool is trimmed once no buffer was asked for this long. */
export const IDLE_SWEEP_MS = 2000;
/** Released memory that is worth a GC + malloc_trim (see idle-gc.ts). */
const RECLAIM_MIN_BYTES = 1024 * 1024;
/** Pooled buffers kept for the whole server. */
const POOL_RETAINED_BYTES = 128 * 1024 * 1024;

export class NbdServer {
  private readonly servers: net.Server[] = [];
  private readonly connections = new Set<Connection>();
  private nextId = 1;
  private stopping: Promise<void> | undefined;
  private readonly pool = new BufferPool(POOL_RETAINED_BYTES);
  /** What every accepted socket reads into (shared-reads.ts); allocated at the first accept. */
  private sharedReadBuffer: Buffer | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  private readonly reclaim: () => void;
  private readonly logDrop = rateLimited(10_000, (suppressed) =>
    this.options.log.warn(
      { connections: this.connections.size, suppressed },
      'connection refused: descriptor limit nearly reached (raise `ulimit -n` / LimitNOFILE)',
    ),
  );
  private readonly requestListeners: ServerRequestListener[] = [];
  private readonly stopHooks: Array<() => Promise<void>> = [];

  private readonly onRequest = (conn: Connection, cmd: number, length: number, startNs: bigint, errno: number): void => {
    for (const l of this.requestListeners) l(conn, cmd, length, startNs, errno);
  };

  /** Requests running on all connections (TransmissionSession keeps it). */
  private readonly load = { requests: 0 };

  /** Accepted connections per read path (a test proves the fast path is the one in use). */
  private readonly readPaths: Record<ReadPath, number> = { shared: 0, stream: 0 };
  private readPathLogged = false;

  constructor(private readonly options: NbdServerOptions) {
    options.io?.setQuietProbe(() => this.load.requests <= 1);
    this.reclaim = idleReclaimer(options.gc);
  }

  /** The read path new connections will use, and why (logged once at the first listen()). */
  plannedReadPath(): { readPath: ReadPath; reason: string } {
    if (!this.sharedReadsWanted()) return { readPath: 'stream', reason: 'shared reads turned off by the I/O policy (IoPolicy.sharedReads; COWNBD_NO_SHARED_READS=1)' };
    if (!sharedReadsSupported()) return { readPath: 'stream', reason: `Node ${process.version} has no socket handle to re-wrap` };
    return { readPath: 'shared', reason: `every socket reads into one ${SHARED_READ_SIZE / 1024} KiB buffer` };
  }

  /** How many accepted connections used each read path so far. */
  readPathCounts(): Readonly<Record<ReadPath, number>> {
    return { ...this.readPaths };
  }

  get provider(): ExportProvider {
    return this.options.provider;
  }

  /** Start listening; resolves with the real address (the real port when port is 0). */
  async listen(endpoint: ListenEndpoint): Promise<ListenAddress> {
    // pauseOnConnect: accepted sockets are re-wrapped for shared reads before any read.
    const server = net.createServer({ noDelay: true, allowHalfOpen: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    const cap = this.options.maxConnections ?? connectionBudget();
    if (cap !== undefined) server.maxConnections = cap;
    server.on('drop', () => this.logDrop());
    this.startSweep();
    this.logReadPath();
    if ('path' in endpoint) await removeStaleSocket(endpoint.path);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      const done = () => {
        server.off('error', reject);
        // Errors after listening are logged; a failed listen() is the caller's to report.
        server.on('error', (err) => this.options.log.error({ err }, 'listener error'));
        resolve();
      };
      if ('path' in endpoint) server.listen(endpoint.path, done);
      else if ('fd' in endpoint) server.listen({ fd: endpoint.fd }, done);
      else server.listen(endpoint.port, endpoint.host, done);
    });
    this.servers.push(server);
    const addr = server.address();
    if (typeof addr === 'string') return { path: addr };
    if (addr) return { host: addr.address, port: addr.port };
    return 'fd' in endpoint ? { fd: endpoint.fd } : {};
  }

  /** Where this server listens, for people: "127.0.0.1:10809", "[::1]:10809", "unix:/path". */
  listeningOn(): string[] {
    return this.servers.flatMap((server) => {
      const addr = server.address();
      if (typeof addr === 'string') return [`unix:${addr}`];
      if (!addr) return [];
      return [addr.family === 'IPv6' ? `[${addr.address}]:${addr.port}` : `${addr.address}:${addr.port}`];
    });
  }

  /** Open connections (the admin API and metrics read them; never mutate). */
  listConnections(): readonly Connection[] {
    return [...this.connections];
  }

  /** Observe every finished request (metrics). */
  addRequestListener(listener: ServerRequestListener): void {
    this.requestListeners.push(listener);
  }

  /** Run `hook` when stop() begins (e.g. close the admin API). */
  onStop(hook: () => Promise<void>): void {
    this.stopHooks.push(hook);
  }

  /** Connections currently open (for tests and metrics). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Graceful stop; idempotent. */
  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  isStopping(): boolean {
    return this.stopping !== undefined;
  }

  private accept(accepted: net.Socket): void {
    if (this.stopping) {
      accepted.destroy();
      return;
    }
    // Admission before anything is read: refused sockets cost one accept and one close.
    const address = accepted.remoteAddress;
    const admission = this.options.security?.admission;
    if (admission?.admit(address) !== undefined) {
      accepted.destroy();
      return;
    }
    const peer = address ? `${address}:${accepted.remotePort}` : 'unix';
    if (this.sharedReadsWanted()) this.sharedReadBuffer ??= Buffer.allocUnsafeSlow(SHARED_READ_SIZE);
    const { socket, setSink, shared } = sharedReadSocket(accepted, { allowHalfOpen: true, shared: this.sharedReadBuffer });
    this.readPaths[shared ? 'shared' : 'stream']++;
    if (!shared && this.sharedReadBuffer && this.readPaths.stream === 1) this.options.log.warn({ readPath: 'stream' }, 'shared reads failed on an accepted socket: using stream reads');
    socket.setNoDelay(true);
    // Notice vanished clients (NBD issue #52: state lingering after an unclean death).
    socket.setKeepAlive(true, 60_000);
    const server: ConnectionServer = {
      provider: this.options.provider,
      security: this.options.security,
      isStopping: () => this.isStopping(),
      pool: this.pool,
      load: this.load,
      // No observer at all (not even a clock read per request) unless someone listens.
      onRequest: this.requestListeners.length > 0 ? this.onRequest : undefined,
    };
    const conn = new Connection(socket, this.nextId++, peer, server, this.options.log, setSink);
    this.connections.add(conn);
    void conn.closed.then(() => {
      this.connections.delete(conn);
      admission?.release(address);
    });
    void conn.start();
  }

  private sharedReadsWanted(): boolean {
    return this.options.io?.policy.sharedReads ?? true;
  }

  /** Said once: which read path serves this server's sockets (a slow fallback is never silent). */
  private logReadPath(): void {
    if (this.readPathLogged) return;
    this.readPathLogged = true;
    const planned = this.plannedReadPath();
    if (planned.readPath === 'shared' || !this.sharedReadsWanted()) this.options.log.info(planned, `read path: ${planned.readPath}`);
    else this.options.log.warn(planned, 'read path: stream (the shared-reads fast path is not available)');
  }

  private startSweep(): void {
    if (this.sweepTimer) return;
    this.sweepTimer = setInterval(() => {
      const now = Date.now();
      const freed = this.pool.trim(IDLE_SWEEP_MS, now);
      // Only after real releases: an idle server is not woken to collect nothing.
      if (freed >= RECLAIM_MIN_BYTES) this.reclaim();
    }, IDLE_SWEEP_MS);
    this.sweepTimer.unref();
  }

  private async doStop(): Promise<void> {
    const log = this.options.log;
    clearInterval(this.sweepTimer);
    log.info({ connections: this.connections.size }, 'stopping: no new connections, draining requests');
    await Promise.all(this.stopHooks.map((h) => h().catch((err: unknown) => log.warn({ err }, 'stop hook failed'))));
    const closing = this.servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve())));
    const conns = [...this.connections];
    const drained = Promise.all(conns.map((c) => c.shutdown()));
    const grace = this.options.stopGraceMs ?? 10_000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      drained.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), grace))),
    ]);
    clearTimeout(timer);
    if (timedOut) {
      log.warn('connections did not finish in time; closing them');
      for (const c of conns) c.destroy();
      await Promise.all(conns.map((c) => c.closed));
    }
    await Promise.all(closing);
    await this.options.provider.close();
    log.info('stopped: all devices flushed and closed');
  }
}

/** A Unix socket left by a crashed server would make listen() fail with EADDRINUSE. */
async function removeStaleSocket(path: string): Promise<void> {
  try {
    const st = await lstat(path);
    if (st.isSocket()) await unlink(path);
  } catch {
    // Does not exist: nothing to do.
  }
}
