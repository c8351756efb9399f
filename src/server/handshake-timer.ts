/**
 * The handshake's two clocks (docs/security.md "Limits"): a client must keep completing
 * options, and must finish haggling within an absolute bound.
 *
 *   idle   `--handshake-timeout` (default 10 s) of the client's turns: from accept, and
 *          from each answer the server sent, until the next option is complete. A
 *          slowloris that trickles bytes without finishing an option is cut here, as
 *          before; the time the server spends on an option does not count. The TLS
 *          handshake runs inside STARTTLS's gap.
 *   total  TOTAL_FACTOR × idle (default 300 s) since accept: an upper bound for a client
 *          that completes options forever (the option allowance caps their number, not
 *          their pace).
 *
 * Why not one 10 s bound for the whole handshake: `nbdinfo --list` asks INFO (and meta
 * contexts) for every listed export, a few round trips each (~0.2 s per export measured),
 * so a server with ~50 or more exports could never be listed. A client that keeps
 * completing options is working, not stalling.
 */

/** The absolute bound is this many idle timeouts. */
export const HANDSHAKE_TOTAL_FACTOR = 30;

export interface HandshakeExpiry {
  readonly kind: 'idle' | 'total';
  /** The bound that was exceeded. */
  readonly seconds: number;
  /** The log line. */
  readonly message: string;
}

const MESSAGES = {
  idle: 'closing connection: handshake idle too long (no option completed in time)',
  total: 'closing connection: handshake not finished in time',
} as const;

export class HandshakeTimer {
  private idle: NodeJS.Timeout | undefined;
  private readonly total: NodeJS.Timeout;
  private stopped = false;
  private readonly fireIdle: () => void;

  /** idleMs > 0; onExpire runs at most once, then both clocks are stopped. */
  constructor(
    private readonly idleMs: number,
    onExpire: (expiry: HandshakeExpiry) => void,
  ) {
    const fire = (kind: HandshakeExpiry['kind'], ms: number): void => {
      if (this.stopped) return;
      this.stop();
      onExpire({ kind, seconds: ms / 1000, message: MESSAGES[kind] });
    };
    const totalMs = idleMs * HANDSHAKE_TOTAL_FACTOR;
    this.fireIdle = () => fire('idle', idleMs);
    this.idle = setTimeout(this.fireIdle, idleMs).unref();
    this.total = setTimeout(() => fire('total', totalMs), totalMs).unref();
  }

  /**
   * An option was completely received: the server's turn. The idle clock waits until the
   * answer is sent (answered()): the server's own work on an option — a fleet machine's
   * GO waiting out a dead owner's lease (docs/fleet.md) — is not the client stalling.
   */
  optionReceived(): void {
    if (this.idle) clearTimeout(this.idle);
    this.idle = undefined;
  }

  /** The server sent an answer: the client's turn, the idle clock starts again. */
  answered(): void {
    if (this.stopped) return;
    if (this.idle) clearTimeout(this.idle);
    this.idle = setTimeout(this.fireIdle, this.idleMs).unref();
  }

  stop(): void {
    this.stopped = true;
    if (this.idle) clearTimeout(this.idle);
    clearTimeout(this.total);
  }
}
