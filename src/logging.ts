/**
 * Logging: pino, JSON lines on stderr; human-readable (pino-pretty) when stderr is a TTY.
 * Child loggers carry context fields: { conn, peer } per connection, { export } per export.
 *
 * pino-pretty (with its colour and date libraries) is required only when pretty output is
 * chosen: a service writing JSON to a journal, and every image tool, never load it. It is
 * CommonJS, so a synchronous require keeps createLogger() synchronous for its callers.
 */
import { createRequire } from 'node:module';
import { pino, type Logger } from 'pino';
import type PinoPretty from 'pino-pretty';

export type { Logger };

export interface LoggerOptions {
  level?: string;
  /** Force pretty (true) or JSON (false) output; default: pretty iff stderr is a TTY. */
  pretty?: boolean;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  // COWNBD_LOG_LEVEL is read by the CLI (serve-process.ts), never here.
  const level = options.level ?? 'info';
  const usePretty = options.pretty ?? Boolean(process.stderr.isTTY);
  if (usePretty) {
    const pretty = createRequire(import.meta.url)('pino-pretty') as typeof PinoPretty;
    return pino({ level }, pretty({ destination: 2, sync: true, colorize: true }));
  }
  return pino({ level }, pino.destination({ fd: 2, sync: true }));
}

/** A logger that discards everything (library use and unit tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
