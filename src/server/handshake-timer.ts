/**
 * The handshake's two clocks (docs/security.md "Limits"): a client must keep completing
 * options, and must finish haggling within an absolute bound.
 *
 *   idle   `--handshake-timeout` (default 10 s) since the last COMPLETED option (or since
 *          accept): a slowloris that trickles bytes without finishing an option is cut
 *          here, as before. The TLS handshake runs inside STARTTLS's gap.
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
  private readonly idle: NodeJS.Timeout;
  private readonly total: NodeJS.Timeout;

  /** idleMs > 0; onExpire runs at most once, then both clocks are stopped. */
  constructor(idleMs: number, onExpire: (expiry: HandshakeExpiry) => void) {
    let fired = false;
    const fire = (kind: HandshakeExpiry['kind'], ms: number): void => {
      if (fired) return;
      fired = true;
      this.stop();
      onExpire({ kind, seconds: ms / 1000, message: MESSAGES[kind] });
    };
    const totalMs = idleMs * HANDSHAKE_TOTAL_FACTOR;
    this.idle = setTimeout(() => fire('idle', idleMs), idleMs).unref();
    this.total = setTimeout(() => fire('total', totalMs), totalMs).unref();
  }

  /** An option was completely received: the idle clock starts again. */
  optionReceived(): void {
    this.idle.refresh();
  }

  stop(): void {
    clearTimeout(this.idle);
    clearTimeout(this.total);
  }
}
