/**
 * Who may see and open which export (docs/security.md "Access control").
 *
 * The identity of a connection is what TLS authenticated (certificate CN or PSK
 * username; undefined without TLS). Two rules decide, per export name:
 *   allow=ID lists  an export with an allow list is visible only to those identities;
 *   match-identity  (--overlay-dir-match-identity) an export that is not a static
 *                   --export is visible only to the identity of the same name, so machine
 *                   vm7 reaches vm7.cow and nothing else.
 * A refused export behaves exactly like a missing one (LIST omits it, INFO/GO answer
 * NBD_REP_ERR_UNKNOWN): a client cannot probe which names exist. Refusals are logged at
 * warn with the identity.
 *
 * AccessView applies the rules to one connection's identity in front of the server's
 * provider; it is cheap (no I/O of its own) and made per connection.
 */
import type { Logger } from '../logging.js';
import type { ExportContext, ExportHandle, ExportInfo, ExportProvider, ExportSummary, StaticExportConfig } from './exports.js';

/** The static exports, looked up at decision time (they can change at reload). */
export interface StaticExportLookup {
  names(): string[];
  config(name: string): StaticExportConfig | undefined;
}

export interface AccessRules {
  readonly exports: StaticExportLookup;
  readonly matchIdentity: boolean;
}

/** True when the rules let `identity` see and open export `name`. */
export function permits(rules: AccessRules, name: string, identity: string | undefined): boolean {
  const config = rules.exports.config(name);
  const allowed = config?.allow;
  if (allowed?.length) return identity !== undefined && allowed.includes(identity);
  // match-identity governs the names no static export claims (overlay-dir machines).
  if (rules.matchIdentity && !config) return identity !== undefined && identity === name;
  return true;
}

export class AccessView implements ExportProvider {
  constructor(
    private readonly inner: ExportProvider,
    private readonly rules: AccessRules,
    private readonly identity: string | undefined,
    private readonly log: Logger,
  ) {}

  async list(): Promise<ExportSummary[]> {
    return (await this.inner.list()).filter((e) => permits(this.rules, e.name, this.identity));
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    return this.check(name) ? this.inner.describe(name) : undefined;
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    return this.check(name) ? this.inner.open(name, ctx) : undefined;
  }

  /** For the handshake's one "refused export name" line per connection. */
  refusalReason(name: string): string | undefined {
    if (!permits(this.rules, name, this.identity)) return `identity ${JSON.stringify(this.identity ?? null)} not allowed`;
    return this.inner.refusalReason?.(name);
  }

  /** The server's provider is closed by the server, never through a view. */
  close(): Promise<void> {
    return Promise.resolve();
  }

  private check(name: string): boolean {
    if (permits(this.rules, name, this.identity)) return true;
    // debug: the handshake logs the refusal once per connection at warn (refusalReason above).
    this.log.debug({ export: name.slice(0, 200), identity: this.identity ?? null }, 'export refused: identity not allowed');
    return false;
  }
}
