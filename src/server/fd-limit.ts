/**
 * Descriptor budget for accepted connections.
 *
 * At RLIMIT_NOFILE libuv accepts and immediately closes new connections, silently (its
 * "EMFILE trick"), and opening an overlay for an existing client would fail too. So the
 * server stops accepting before that: net.Server.maxConnections is set to what the limit
 * leaves after the descriptors already open and a reserve for image files, and Node's
 * 'drop' event (a refused connection) is logged, rate-limited. Linux only (reads /proc);
 * elsewhere no cap is set.
 */
import { readFileSync, readdirSync } from 'node:fs';

/** Descriptors kept free for overlays, backing files and the runtime itself. */
export const FD_RESERVE = 64;

/** The soft RLIMIT_NOFILE of this process, or undefined when it cannot be read. */
export function openFileLimit(): number | undefined {
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function openDescriptors(): number | undefined {
  try {
    return readdirSync('/proc/self/fd').length;
  } catch {
    return undefined;
  }
}

/** Connections one listener may hold, or undefined for no cap. At least 1. */
export function connectionBudget(limit = openFileLimit(), open = openDescriptors()): number | undefined {
  if (limit === undefined || open === undefined) return undefined;
  // Each connection costs one descriptor; keep a reserve that scales down for tiny limits.
  const reserve = Math.min(FD_RESERVE, Math.floor(limit / 4));
  return Math.max(1, limit - open - reserve);
}

/** A logger call allowed at most once per `intervalMs`; reports how many were suppressed. */
export function rateLimited(intervalMs: number, emit: (suppressed: number) => void): () => void {
  let last = -Infinity;
  let suppressed = 0;
  return () => {
    const now = Date.now();
    if (now - last < intervalMs) {
      suppressed++;
      return;
    }
    last = now;
    emit(suppressed);
    suppressed = 0;
  };
}
