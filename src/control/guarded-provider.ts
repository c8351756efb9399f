/**
 * GuardedProvider: the provider the server talks to, wrapping the real ones, so the
 * control plane can keep new clients away from an export while it works on it (reset,
 * delete, snapshot): a held name is invisible to LIST, INFO and GO for that moment.
 *
 * Holding is reference-counted and always released (hold() takes a function), so an
 * operation that fails never leaves an export hidden.
 */
import type { ExportContext, ExportHandle, ExportInfo, ExportProvider, ExportSummary } from '../server/exports.js';

export class GuardedProvider implements ExportProvider {
  private readonly held = new Map<string, number>();

  constructor(readonly inner: ExportProvider) {}

  /** Run `fn` while new connections to `name` are refused. */
  async hold<T>(name: string, fn: () => Promise<T>): Promise<T> {
    this.held.set(name, (this.held.get(name) ?? 0) + 1);
    try {
      return await fn();
    } finally {
      const n = this.held.get(name)! - 1;
      if (n > 0) this.held.set(name, n);
      else this.held.delete(name);
    }
  }

  isHeld(name: string): boolean {
    return this.held.has(name);
  }

  async list(): Promise<ExportSummary[]> {
    return (await this.inner.list()).filter((e) => !this.held.has(e.name));
  }

  async describe(name: string): Promise<ExportInfo | undefined> {
    return this.held.has(name) ? undefined : this.inner.describe(name);
  }

  async open(name: string, ctx: ExportContext): Promise<ExportHandle | undefined> {
    return this.held.has(name) ? undefined : this.inner.open(name, ctx);
  }

  /** Passed through so the handshake's "refused export name" line keeps the real reason. */
  refusalReason(name: string): string | undefined {
    return this.held.has(name) ? 'held by the control plane' : this.inner.refusalReason?.(name);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
