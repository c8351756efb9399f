/**
 * Shared reads: every accepted socket of a server reads into ONE reused buffer; the
 * connection consumes each read synchronously and copies out only what it keeps.
 *
 * Why: Node's default stream path allocates a fresh 64 KiB Buffer per read (and our earlier
 * design allocated fresh 4 MiB arenas and handed out views). Fresh memory is external to
 * V8's heap, and V8 answers external-memory growth with full mark-compact collections:
 * measured with `--trace-gc` during 1 MiB sequential writes, ~20 mark-compacts a second, and
 * `perf record` put about a third of the server's CPU in GC marking/sweeping plus page
 * faults on the new memory. Reading into the same memory every time costs no allocation:
 * request headers are decoded in place, WRITE payloads are copied once into pooled buffers
 * as their bytes arrive (transmission.ts), and whatever is still buffered when the sink
 * returns (a partial header, handshake bytes, bytes held back while a session is paused) is
 * copied by ByteReader.settle().
 *
 * Sharing one buffer between sockets is safe because libuv calls the read callback right
 * after each read(), on the main thread, before the next read of any socket; while the sink
 * runs nothing else writes into the buffer, and the sink leaves no view of it behind.
 *
 * Direct reads: while a large WRITE payload is incomplete and nothing is buffered ahead of
 * it, the sink names the payload's missing part as the target of the next read, so those
 * bytes go from the kernel straight into the payload (no copy at all). Node asks for the
 * next read's buffer right after each read callback (`onread.buffer` as a function), i.e.
 * exactly when the sink has consumed everything; the target stays valid until the next
 * read because only a read can add bytes or complete the payload (transmission.ts).
 *
 * Node offers `onread` only for sockets it creates, so the accepted socket's handle is
 * re-wrapped (`pauseOnConnect` keeps the original socket from ever reading). If that
 * internal handle is not there (a future Node), the plain socket is used with 'data' events.
 */
import net from 'node:net';

/**
 * One read at most. Small enough that a read carrying a WRITE header brings little of its
 * payload along (that part is copied; the rest is read directly), large enough to hold
 * thousands of request headers.
 */
export const SHARED_READ_SIZE = 64 * 1024;

/** The consumer of a socket's input. */
export interface ReadSink {
  /** Bytes read. `transient`: a view of the shared buffer, valid only during the call. */
  bytes(chunk: Buffer, transient: boolean): void;
  /** Where the next read may land instead of the shared buffer (see above), if anywhere. */
  directTarget(): Buffer | undefined;
  /** `n` bytes were read into the start of the last directTarget(). */
  direct(n: number): void;
}

export interface SharedReadSocket {
  readonly socket: net.Socket;
  /** Set the consumer of incoming bytes; until set, bytes are queued (as copies). */
  readonly setSink: (sink: ReadSink) => void; // a closure: callers may detach it
  /** True when the socket reads into the shared buffer, false on Node's stream path. */
  readonly shared: boolean;
}

/**
 * Whether this Node keeps a socket's handle where the re-wrap looks for it (`_handle`, an
 * accessor on net.Socket in Node 24, a plain field in older releases). Checked on an
 * unconnected socket, which owns no handle and no descriptor, so the server can say at
 * start which read path it will use.
 */
export function sharedReadsSupported(): boolean {
  const probe = new net.Socket();
  const supported = '_handle' in probe;
  probe.destroy();
  return supported;
}

/**
 * Wrap a socket accepted with `pauseOnConnect: true` so it reads into `shared` (one buffer
 * per server, see above), or, when `shared` is undefined or re-wrapping is impossible,
 * resume the original socket with its 'data' events routed to the sink.
 */
export function sharedReadSocket(accepted: net.Socket, options: { allowHalfOpen: boolean; shared: Buffer | undefined }): SharedReadSocket {
  let sink: ReadSink | undefined;
  const early: Buffer[] = [];
  const deliver = (bytes: Buffer, transient: boolean): void => {
    if (sink) sink.bytes(bytes, transient);
    else early.push(transient ? Buffer.from(bytes) : bytes);
  };
  const setSink = (s: ReadSink): void => {
    sink = s;
    for (const b of early.splice(0)) s.bytes(b, false);
  };
  const handle = (accepted as unknown as { _handle?: unknown })._handle;
  const shared = options.shared;
  if (!handle || !shared) {
    accepted.on('data', (bytes: Buffer) => deliver(bytes, false));
    accepted.resume();
    return { socket: accepted, setSink, shared: false };
  }
  const socket = new net.Socket({
    handle: handle as never,
    allowHalfOpen: options.allowHalfOpen,
    readable: true,
    writable: true,
    onread: {
      // Called once now and then right after every callback below: the next read's memory.
      buffer: (): Buffer => sink?.directTarget() ?? shared,
      callback: (n: number, buf: Uint8Array): boolean => {
        if (buf.buffer === shared.buffer) deliver(shared.subarray(0, n), true);
        else sink!.direct(n);
        return true; // keep reading (false would pause the socket)
      },
    },
  } as net.SocketConstructorOpts);
  // The wrapper owns the handle now. The original socket must neither touch it nor stay
  // open: net.Server counts it as a connection until it closes (server.close() waits for
  // that), so destroy it, handle-less, when the wrapper closes.
  (accepted as unknown as { _handle: unknown })._handle = null;
  socket.once('close', () => accepted.destroy());
  return { socket, setSink, shared: true };
}
