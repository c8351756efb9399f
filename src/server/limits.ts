/**
 * Admission at accept (docs/security.md "Limits"): the IP allow-list and the connection
 * caps, decided before a single byte is read, so a flood costs one accept and one close.
 *
 *   admit(address) ─► undefined (admitted; call release(address) when it closes)
 *                  └► a reason string (the caller closes the socket)
 *
 * Refusals are logged through RateLimitedWarning: the first one at once, then at most one
 * line per interval carrying how many were suppressed, never a line per connection.
 * Unix-socket clients (no address) pass the allow-list and the per-client cap: they are
 * local and share no meaningful source address; the total cap still counts them.
 */
import { BlockList, isIP } from 'node:net';
import type { Logger } from '../logging.js';

/** Logs `message` at most once per interval; reports how many occurrences were folded in. */
export class RateLimitedWarning {
  private last = -Infinity;
  private suppressed = 0;

  constructor(
    private readonly log: Logger,
    private readonly message: string,
    private readonly intervalMs: number,
    private readonly now: () => number = Date.now,
  ) {}

  warn(fields: Record<string, unknown>): void {
    const t = this.now();
    if (t - this.last < this.intervalMs) {
      this.suppressed++;
      return;
    }
    this.log.warn({ ...fields, suppressed: this.suppressed, intervalSeconds: this.intervalMs / 1000 }, this.message);
    this.last = t;
    this.suppressed = 0;
  }
}

/** Parse `--allow-from` entries (CIDR or single address, IPv4 or IPv6) into a BlockList. */
export function parseAllowFrom(entries: readonly string[]): BlockList | undefined {
  if (entries.length === 0) return undefined;
  const list = new BlockList();
  for (const entry of entries) {
    const slash = entry.indexOf('/');
    const addr = slash < 0 ? entry : entry.slice(0, slash);
    const family = isIP(addr);
    if (family === 0) throw new Error(`--allow-from "${entry}": not an IP address or CIDR`);
    const type = family === 6 ? 'ipv6' : 'ipv4';
    if (slash < 0) {
      list.addAddress(addr, type);
      continue;
    }
    const prefixText = entry.slice(slash + 1);
    const prefix = Number(prefixText);
    const max = family === 6 ? 128 : 32;
    if (!/^\d+$/.test(prefixText) || prefix > max) throw new Error(`--allow-from "${entry}": prefix must be 0-${max}`);
    list.addSubnet(addr, prefix, type);
  }
  return list;
}

/** `::ffff:10.0.0.1` (IPv4 on a dual-stack socket) → 10.0.0.1, so IPv4 rules apply. */
function plainAddress(address: string): string {
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

export interface AdmissionOptions {
  readonly maxConnections: number;
  readonly maxConnectionsPerClient: number;
  readonly allowFrom?: BlockList;
  /** Minimum time between two refusal log lines of one kind (ms). */
  readonly logIntervalMs?: number;
}

export class Admission {
  private total = 0;
  private readonly perClient = new Map<string, number>();
  private readonly warnings: Record<'allow' | 'total' | 'client', RateLimitedWarning>;

  constructor(
    private readonly options: AdmissionOptions,
    log: Logger,
  ) {
    const every = options.logIntervalMs ?? 10_000;
    this.warnings = {
      allow: new RateLimitedWarning(log, 'connection refused: address not in --allow-from', every),
      total: new RateLimitedWarning(log, 'connection refused: --max-connections reached', every),
      client: new RateLimitedWarning(log, 'connection refused: --max-connections-per-client reached', every),
    };
  }

  /** undefined = admitted (counted); otherwise why the connection must be closed. */
  admit(remoteAddress: string | undefined): string | undefined {
    const address = remoteAddress === undefined ? undefined : plainAddress(remoteAddress);
    const o = this.options;
    if (address !== undefined && o.allowFrom && !o.allowFrom.check(address, isIP(address) === 6 ? 'ipv6' : 'ipv4')) {
      this.warnings.allow.warn({ peer: address });
      return 'address not allowed';
    }
    if (this.total >= o.maxConnections) {
      this.warnings.total.warn({ peer: address ?? 'unix', limit: o.maxConnections });
      return 'too many connections';
    }
    const mine = address === undefined ? 0 : (this.perClient.get(address) ?? 0);
    if (address !== undefined && mine >= o.maxConnectionsPerClient) {
      this.warnings.client.warn({ peer: address, limit: o.maxConnectionsPerClient });
      return 'too many connections from this address';
    }
    this.total++;
    if (address !== undefined) this.perClient.set(address, mine + 1);
    return undefined;
  }

  /** An admitted connection closed. */
  release(remoteAddress: string | undefined): void {
    this.total--;
    if (remoteAddress === undefined) return;
    const address = plainAddress(remoteAddress);
    const n = (this.perClient.get(address) ?? 1) - 1;
    if (n <= 0) this.perClient.delete(address);
    else this.perClient.set(address, n);
  }
}
