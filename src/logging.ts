/**
 * Logging: pino, JSON lines on stderr; human-readable (pino-pretty) when stderr is a TTY.
 * Child loggers carry context fields: { conn, peer } per connection, { export } per export.
 */
import { pino, type Logger } from 'pino';
import pretty from 'pino-pretty';

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
    return pino({ level }, pretty({ destination: 2, sync: true, colorize: true }));
  }
  return pino({ level }, pino.destination({ fd: 2, sync: true }));
}

/** A logger that discards everything (library use and unit tests). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
