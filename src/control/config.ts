/**
 * `serve --config FILE`: the TOML configuration file, parsed with smol-toml and validated
 * with a zod schema, turned into the SAME options object the command line builds
 * (ServeOptions fields), so both paths start the server through one code path.
 *
 *   text ─► smol-toml ─► zod schema (strict: unknown keys are errors) ─► FileOptions
 *
 * Every error names the file, the line and the key path (`export[1].path`), e.g.
 *   vms.toml:14: export[1] ("vm1").format: must be one of raw, cow, add-cow (got "qcow2")
 * smol-toml reports positions only for syntax errors; for schema errors the line is found
 * by a small scan of the text (lineOfKey), which understands the table headers we use.
 *
 * Relative paths in the file are relative to the file's directory (like nbd-server and
 * systemd units), never to the server's working directory.
 */
import path from 'node:path';
import { parse as parseToml, TomlError } from 'smol-toml';
import type { z } from 'zod';
import type { StaticExportConfig } from '../server/exports.js';
import type { ListenEndpoint } from '../server/listener.js';
import { readConfigText } from './config-read.js';
import { configSchema, toOptions, type FileOptions } from './config-schema.js';

export type { FileOptions } from './config-schema.js';

/** A config file that cannot be used: the message names file, line and key. */
export class ConfigError extends Error {
  override name = 'ConfigError';
}


/** Read and validate a config file. Throws ConfigError naming file, line and key. */
export async function loadConfigFile(file: string): Promise<FileOptions> {
  let text: string;
  try {
    // Never blocks on a FIFO or device, never reads without bound (config-read.ts).
    text = await readConfigText(file);
  } catch (err) {
    throw new ConfigError(`${file}: cannot read config: ${(err as Error).message}`);
  }
  return parseConfigText(text, file);
}

export function parseConfigText(text: string, file: string): FileOptions {
  let data: unknown;
  try {
    data = parseToml(text);
  } catch (err) {
    if (err instanceof TomlError) {
      const reason = err.message.split('\n')[0]!.replace(/^Invalid TOML document: /, '');
      throw new ConfigError(`${file}:${err.line}: TOML syntax error: ${reason}`);
    }
    throw new ConfigError(`${file}: ${(err as Error).message}`);
  }
  const result = configSchema.safeParse(data);
  if (!result.success) {
    const messages = result.error.issues.map((issue) => describeIssue(issue, text, file, data));
    throw new ConfigError(messages.join('; '));
  }
  return toOptions(result.data, path.dirname(path.resolve(file)));
}

function describeIssue(issue: z.core.$ZodIssue, text: string, file: string, data: unknown): string {
  let keyPath = issue.path.map((p) => (typeof p === 'symbol' ? String(p) : p));
  let message = issue.message;
  if (issue.code === 'unrecognized_keys') {
    // Point at the first unknown key itself.
    keyPath = [...keyPath, issue.keys[0]!];
    message = `unknown key${issue.keys.length > 1 ? 's' : ''} ${issue.keys.map((k) => `"${k}"`).join(', ')}`;
  } else if (issue.code === 'invalid_value' && 'values' in issue) {
    const got = valueAt(data, keyPath);
    message = `must be one of ${issue.values.join(', ')} (got ${JSON.stringify(got)})`;
  } else if (issue.code === 'invalid_type') {
    const got = valueAt(data, keyPath);
    message = got === undefined ? `is required (${issue.expected})` : `must be ${issue.expected === 'array' ? 'a list' : `a ${issue.expected}`} (got ${JSON.stringify(got)})`;
  }
  const line = lineOfKey(text, keyPath);
  return `${file}${line ? `:${line}` : ''}: ${formatKeyPath(keyPath, data)}: ${message}`;
}

function valueAt(data: unknown, keyPath: ReadonlyArray<string | number>): unknown {
  let v = data;
  for (const k of keyPath) v = v && typeof v === 'object' ? (v as Record<string | number, unknown>)[k] : undefined;
  return v;
}

/** `export[1] ("vm1").path`, `server.listen[0]`. */
export function formatKeyPath(keyPath: ReadonlyArray<string | number>, data?: unknown): string {
  let out = '';
  keyPath.forEach((k, i) => {
    if (typeof k === 'number') {
      out += `[${k}]`;
      const name = keyPath[0] === 'export' && i === 1 ? valueAt(data, ['export', k, 'name']) : undefined;
      if (typeof name === 'string') out += ` (${JSON.stringify(name)})`;
    } else out += (out ? '.' : '') + k;
  });
  return out || '(top level)';
}

/**
 * 1-based line of `keyPath` in the TOML text, or undefined. Handles the layouts this
 * file uses: `[table]`, `[[export]]` (the N-th occurrence for index N) and `key = value`
 * lines inside them; falls back to the table header when the key itself is absent.
 */
export function lineOfKey(text: string, keyPath: ReadonlyArray<string | number>): number | undefined {
  const lines = text.split('\n');
  const [table, second, third] = keyPath;
  if (typeof table !== 'string') return undefined;
  const keyLine = (from: number, key: string): number | undefined => {
    const re = new RegExp(`^\\s*["']?${escapeRegExp(key)}["']?\\s*=`);
    for (let i = from; i < lines.length; i++) {
      if (/^\s*\[/.test(lines[i]!)) return undefined; // next table
      if (re.test(lines[i]!)) return i + 1;
    }
    return undefined;
  };
  // A top-level key (before any table) or a table header.
  const top = keyLine(0, table);
  if (top && keyPath.length === 1) return top;
  if (table === 'export' && typeof second === 'number') {
    let seen = -1;
    for (let i = 0; i < lines.length; i++) {
      if (/^\s*\[\[\s*export\s*\]\]/.test(lines[i]!) && ++seen === second) {
        return (typeof third === 'string' ? keyLine(i + 1, third) : undefined) ?? i + 1;
      }
    }
    return undefined;
  }
  const header = lines.findIndex((l) => new RegExp(`^\\s*\\[\\s*${escapeRegExp(table)}\\s*\\]`).test(l));
  if (header < 0) return top;
  return (typeof second === 'string' ? keyLine(header + 1, second) : undefined) ?? header + 1;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}


/** Option names a file value may fill in (the command line wins when given there). */
const MERGED_KEYS = [
  'logLevel', 'readOnly', 'ignoreMtime', 'pidfile', 'exitWithParent', 'allowPath', 'backingPathMap', 'bitmapSyncInterval',
  'base', 'baseFormat', 'overlayDir', 'overlayDirMatchIdentity', 'overlayStore', 'ship', 'leaseTtl', 'ephemeral', 'ephemeralDir', 'createDirs', 'name', 'admin', 'adminTokenFile',
  'tls', 'tlsCertificates', 'tlsVerifyPeer', 'tlsPsk',
  'allowFrom', 'handshakeTimeout', 'maxConnections', 'maxConnectionsPerClient', 'maxOverlays', 'minFree', 'maxSnapshots',
  's3Endpoint', 's3Region', 's3Addressing', 's3MaxGets', 's3Timeout', 's3Retries', 'cacheDir', 'cacheSize', 'cacheMinFree',
] as const satisfies ReadonlyArray<keyof FileOptions>;

/**
 * Fill the command-line options from the file: a value given on the command line wins
 * (`fromCli(key)`), the file's exports come before the command line's, and the file's
 * listen addresses are used unless -p/-b/-U were given.
 */
export function mergeFileOptions<T extends { export: StaticExportConfig[]; listen?: ListenEndpoint[] }>(
  o: T,
  file: FileOptions,
  fromCli: (key: string) => boolean,
): T {
  const out: Record<string, unknown> = { ...o };
  for (const k of MERGED_KEYS) if (file[k] !== undefined && !fromCli(k)) out[k] = file[k];
  out.export = [...file.export, ...o.export];
  if (file.listen && !['port', 'bind', 'socket'].some(fromCli)) out.listen = file.listen;
  return out as T;
}
