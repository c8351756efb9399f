/**
 * What `serve` (and `demo`) need to register their options: defaults, the ServeOptions
 * shape and the argument parsers commander calls while parsing. Nothing here starts or
 * opens anything, so cli/main.ts can register every command without loading the server,
 * the formats' code or the control plane (serve-action.ts does, when serve runs).
 */
import os from 'node:os';
import path from 'node:path';
import { InvalidArgumentError } from 'commander';
import type { ImageFormat } from '../formats/open-image.js';
import { FORMAT_NAMES } from '../formats/registry.js';
import type { ListenEndpoint } from '../server/listener.js';
import type { StaticExportConfig } from '../server/exports.js';
import type { ObjectStoreFlags } from '../objectstore/cli-options.js';
import { parseEndpoint, type AdminEndpoint } from '../control/endpoint.js';
import type { PathMapping } from '../formats/path-map.js';
import type { ProcessOptions } from './serve-process.js';
import type { SecurityCliOptions } from './security-options.js';

export const DEFAULT_PORT = 10809;
export const DEFAULT_BIND = '127.0.0.1';
/** Where --ephemeral overlays live unless --ephemeral-dir says otherwise (created when missing). */
export const DEFAULT_EPHEMERAL_DIR = path.join(os.tmpdir(), 'cownbd-ephemeral');

export interface ServeOptions extends ProcessOptions, SecurityCliOptions, ObjectStoreFlags {
  port: number;
  bind: string;
  socket?: string;
  name: string;
  description?: string;
  readOnly?: boolean;
  format?: ImageFormat;
  backingFormat?: ImageFormat;
  backingPathMap?: PathMapping[];
  allowPath?: string[];
  export: StaticExportConfig[];
  base?: string;
  baseFormat?: ImageFormat;
  overlayDir?: string;
  /** Fleet mode (docs/fleet.md). */
  overlayStore?: string;
  ship?: string;
  leaseTtl?: number;
  ephemeral?: boolean;
  ephemeralDir?: string;
  /** Return once listening, the server running on as a detached child (cli/background.ts). */
  background?: boolean;
  /** Create a missing --overlay-dir / --ephemeral-dir (otherwise a missing one is an error). */
  createDirs?: boolean;
  ignoreMtime?: boolean;
  config?: string;
  /** Listen addresses from a config file (used unless -p/-b/-U are given). */
  listen?: ListenEndpoint[];
  admin?: AdminEndpoint;
  adminTokenFile?: string;
  /** Seconds writable overlays may keep allocation bits in memory only (0: until FLUSH/close). */
  bitmapSyncInterval?: number;
}

/** An operator error: main.ts prints its message as one line, without a stack trace. */
export class UsageError extends Error {
  override name = 'UsageError';
}

export function parsePort(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) throw new InvalidArgumentError(`port must be an integer 0-65535 (got "${value}")`);
  return n;
}

export function parseFormat(value: string, field = 'format'): ImageFormat {
  if (!FORMAT_NAMES.includes(value)) {
    throw new InvalidArgumentError(`${field} must be one of ${FORMAT_NAMES.join(', ')} (got "${value}")`);
  }
  return value;
}

/**
 * `NAME=PATH[,opts]` with opts `ro`, `rw`, `format=F`, `backing-format=F`, `allow=ID`
 * (repeatable), `description=TEXT`. Options are separated by commas; a description
 * containing commas must be double-quoted (`description="Base disk, v2"`). Anything that
 * is not a known option is an error: a description never silently swallows the options
 * after it.
 */
export function parseExportSpec(spec: string): StaticExportConfig {
  const eq = spec.indexOf('=');
  if (eq < 0) throw new InvalidArgumentError(`--export must be NAME=PATH[,opts] (got "${spec}")`);
  const name = spec.slice(0, eq);
  const [path, ...opts] = splitOptions(spec.slice(eq + 1), spec);
  if (!path) throw new InvalidArgumentError(`--export "${spec}": PATH is empty`);
  if (Buffer.byteLength(name) > MAX_EXPORT_NAME) throw new InvalidArgumentError(`--export "${name.slice(0, 40)}…": name longer than ${MAX_EXPORT_NAME} bytes (the NBD limit)`);
  const config: { -readonly [K in keyof StaticExportConfig]: StaticExportConfig[K] } = { name, path };
  for (const opt of opts) {
    if (opt === 'ro' || opt === 'readonly') config.readOnly = true;
    else if (opt === 'rw') config.readOnly = false;
    else if (opt.startsWith('format=')) config.format = parseFormat(opt.slice(7), `--export ${name} format`);
    else if (opt.startsWith('backing-format=')) config.backingFormat = parseFormat(opt.slice(15), `--export ${name} backing-format`);
    else if (opt.startsWith('allow=') && opt.length > 6) config.allow = [...(config.allow ?? []), opt.slice(6)];
    else if (opt.startsWith('description=')) config.description = unquote(opt.slice(12));
    else {
      const hint = config.description !== undefined ? '; a description with commas must be quoted: description="a, b"' : '';
      throw new InvalidArgumentError(`--export "${spec}": unknown option "${opt}" (expected ro, rw, format=, backing-format=, allow=, description=)${hint}`);
    }
  }
  return config;
}

/** Split on commas outside double quotes. */
function splitOptions(text: string, spec: string): string[] {
  const out: string[] = [];
  let current = '';
  let quoted = false;
  for (const ch of text) {
    if (ch === '"') quoted = !quoted;
    if (ch === ',' && !quoted) {
      out.push(current);
      current = '';
    } else current += ch;
  }
  if (quoted) throw new InvalidArgumentError(`--export "${spec}": unbalanced double quote`);
  out.push(current);
  return out;
}

function unquote(value: string): string {
  return value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? value.slice(1, -1) : value;
}

/** NBD strings (export names) are at most 4096 bytes. */
export const MAX_EXPORT_NAME = 4096;

/** `--lease-ttl SECONDS`: 1..3600 (fractions allowed). */
export function parseLeaseTtl(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 1 || n > 3600) throw new InvalidArgumentError(`--lease-ttl must be a number of seconds from 1 to 3600 (got "${value}")`);
  return n;
}

/** Longest --bitmap-sync-interval: beyond an hour "bounded" would mean little. */
export const MAX_BITMAP_SYNC_INTERVAL = 3600;

/** `--bitmap-sync-interval SECONDS`: a number 0..3600 (fractions allowed; 0 = off). */
export function parseBitmapSyncInterval(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > MAX_BITMAP_SYNC_INTERVAL) {
    throw new InvalidArgumentError(`--bitmap-sync-interval must be a number of seconds from 0 (off) to ${MAX_BITMAP_SYNC_INTERVAL} (got "${value}")`);
  }
  return n;
}

export function parseAdminEndpoint(value: string): AdminEndpoint {
  const e = parseEndpoint(value);
  if (!e) throw new InvalidArgumentError(`--admin must be unix:/path or HOST:PORT (got "${value}")`);
  return e as AdminEndpoint;
}
