/**
 * Arena reads: accepted sockets read straight into large reusable memory instead of
 * Node's fresh 64 KiB buffer per read.
 *
 * Why: on the target VM Node's default stream path delivered ~1.7 GB/s from a C sender into
 * a do-nothing sink, `onread` into a reused 1 MiB buffer ~2.9 GB/s; large WRITE payloads
 * were then copied once more out of the 64 KiB chunks. Here each read lands in the free
 * tail of a 4 MiB arena; the connection receives a view of exactly the bytes read, and the
 * ByteReader merges views that are adjacent in one arena, so a payload received in many
 * reads is still one contiguous view (no copy) unless it crosses into a new arena.
 * Arenas are never reused: a view stays valid as long as something holds it (the GC frees
 * an arena when its last view is gone), so handing out views is safe.
 *
 * Memory follows the traffic: a connection starts with a small arena and moves to larger
 * ones (×4 up to ARENA_SIZE) only while reads fill what they are offered; release() (the
 * server's idle sweep) drops the arena, so an idle connection holds no read memory.
 *
 * Node offers `onread` only for sockets it creates, so the accepted socket's handle is
 * re-wrapped (`pauseOnConnect` keeps the original socket from ever reading). If that
 * internal handle is not there (a future Node), the plain socket is used unchanged.
 */
import net from 'node:net';

const ARENA_SIZE = 4 * 1024 * 1024;
/** First arena of a connection (and after an idle release): a handshake needs little. */
const SMALL_ARENA = 64 * 1024;

class ReadArena {
  private arena: Buffer | undefined;
  private used = 0;
  /** Size of the next arena: grows while reads fill their buffer, resets on release(). */
  private size = SMALL_ARENA;

  /** Memory for the next read: the arena's free tail (a fresh arena when < 1/16 is left). */
  readonly next = (): Buffer => {
    if (!this.arena || this.arena.length - this.used < this.size / 16) {
      this.arena = Buffer.allocUnsafeSlow(this.size);
      this.used = 0;
    }
    return this.arena.subarray(this.used);
  };

  /** `buf` (from next()) now holds `n` new bytes: return their view and claim them. */
  commit(buf: Buffer, n: number): Buffer {
    this.used += n;
    // The read took all it was offered: more is waiting, read bigger next time.
    if (n === buf.length && this.size < ARENA_SIZE) this.size *= 4;
    return buf.subarray(0, n);
  }

  /** Idle: forget the arena (views handed out keep it alive as long as needed); its size. */
  release(): number {
    const freed = this.arena?.length ?? 0;
    this.arena = undefined;
    this.used = 0;
    this.size = SMALL_ARENA;
    return freed;
  }
}

export interface ArenaSocket {
  readonly socket: net.Socket;
  /** Set the consumer of incoming bytes (views into arenas); until set, bytes are queued. */
  setSink(sink: (bytes: Buffer) => void): void;
  /** Drop idle read memory; returns the bytes dropped (0 for a plain socket). */
  release(): number;
}

/**
 * Wrap a socket accepted with `pauseOnConnect: true`. Returns a socket whose data arrives
 * through setSink() (no 'data' events), or, when re-wrapping is impossible, the original
 * socket resumed with its 'data' events routed to the sink.
 */
export function arenaSocket(accepted: net.Socket, options: { allowHalfOpen: boolean; arena: boolean }): ArenaSocket {
  let sink: ((bytes: Buffer) => void) | undefined;
  const early: Buffer[] = [];
  const deliver = (bytes: Buffer): void => {
    if (sink) sink(bytes);
    else early.push(bytes);
  };
  const setSink = (s: (bytes: Buffer) => void): void => {
    sink = s;
    for (const b of early.splice(0)) s(b);
  };
  const handle = (accepted as unknown as { _handle?: unknown })._handle;
  if (!handle || !options.arena) {
    accepted.on('data', deliver);
    accepted.resume();
    return { socket: accepted, setSink, release: () => 0 };
  }
  const arena = new ReadArena();
  const socket = new net.Socket({
    handle: handle as never,
    allowHalfOpen: options.allowHalfOpen,
    readable: true,
    writable: true,
    onread: {
      buffer: arena.next,
      callback: (n: number, buf: Uint8Array): boolean => {
        deliver(arena.commit(buf as Buffer, n));
        return true; // keep reading (false would pause the socket)
      },
    },
  } as net.SocketConstructorOpts);
  // The wrapper owns the handle now. The original socket must neither touch it nor stay
  // open: net.Server counts it as a connection until it closes (server.close() waits for
  // that), so destroy it, handle-less, when the wrapper closes.
  (accepted as unknown as { _handle: unknown })._handle = null;
  socket.once('close', () => accepted.destroy());
  const release = (): number => {
    const freed = arena.release();
    // Node prepares the NEXT read buffer right after each read and keeps it (a view of the
    // old arena, which it keeps alive). Hand it a fresh small one instead, or the released
    // arena stays resident for as long as the connection is quiet.
    if (freed > 0) replacePendingBuffer(socket, arena.next());
    return freed;
  };
  return { socket, setSink, release };
}

/** Swap the buffer Node holds for the socket's next read (internal: kBuffer + useUserBuffer). */
function replacePendingBuffer(socket: net.Socket, buf: Buffer): void {
  const key = Object.getOwnPropertySymbols(socket).find((s) => s.description === 'kBuffer');
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } })._handle;
  if (!key || typeof handle?.useUserBuffer !== 'function') return; // another Node: keep its buffer
  (socket as unknown as Record<symbol, unknown>)[key] = buf;
  handle.useUserBuffer(buf);
}
