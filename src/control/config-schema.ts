/**
 * The configuration file's schema (zod) and its translation into serve options: every
 * table and key of docs/configuration.md, strict (unknown keys are errors), with the option
 * names the command line uses (kebab-case keys ↔ --long-options). config.ts parses the
 * TOML, reports errors with lines, and merges the result with the command line.
 */
import { parseShipPolicy } from '../fleet/machine-device.js';
import path from 'node:path';
import { z } from 'zod';
import { IMAGE_FORMATS, type ImageFormat } from '../formats/open-image.js';
import { parsePathMapping, type PathMapping } from '../formats/path-map.js';
import type { StaticExportConfig } from '../server/exports.js';
import type { ListenEndpoint } from '../server/listener.js';
import { TLS_MODES, type TlsMode } from '../server/tls.js';
import { parseSize } from '../util/size.js';
import { isObjectStoreUri } from '../objectstore/uri.js';
import type { ObjectStoreFlags } from '../objectstore/cli-options.js';
import { parseEndpoint, type AdminEndpoint } from './endpoint.js';
import { MAX_SNAPSHOTS_LIMIT } from './snapshot-limit.js';

/** What a config file says, in the shape of the serve options (absent = not said). */
/** What a config file can say: serve's options, the object-store ones (ObjectStoreFlags) included. */
export interface FileOptions extends ObjectStoreFlags {
  listen?: ListenEndpoint[];
  admin?: AdminEndpoint;
  adminTokenFile?: string;
  bitmapSyncInterval?: number;
  logLevel?: string;
  readOnly?: boolean;
  ignoreMtime?: boolean;
  pidfile?: string;
  exitWithParent?: boolean;
  allowPath?: string[];
  backingPathMap?: PathMapping[];
  export: StaticExportConfig[];
  base?: string;
  baseFormat?: ImageFormat;
  overlayDir?: string;
  overlayDirMatchIdentity?: boolean;
  /** Fleet mode (docs/fleet.md): where machines live, when they ship, the lease TTL (seconds). */
  overlayStore?: string;
  ship?: string;
  leaseTtl?: number;
  ephemeral?: boolean;
  ephemeralDir?: string;
  /** [overlays]/[ephemeral] create-dir: create the directory when missing. */
  createDirs?: boolean;
  /** Export name of the ephemeral base ([ephemeral] name). */
  name?: string;
  tls?: TlsMode;
  tlsCertificates?: string;
  tlsVerifyPeer?: boolean;
  tlsPsk?: string;
  allowFrom?: string[];
  handshakeTimeout?: number;
  maxConnections?: number;
  maxConnectionsPerClient?: number;
  maxOverlays?: number;
  minFree?: number;
  maxSnapshots?: number;
}

const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

const endpoint = z.string().refine((s) => parseEndpoint(s) !== undefined, {
  message: 'must be "HOST:PORT", "[IPv6]:PORT" or "unix:/path/to/socket"',
});
const format = z.enum(IMAGE_FORMATS as [ImageFormat, ...ImageFormat[]]);
const nonEmpty = z.string().min(1, 'must not be empty');
const positive = z.number().int('must be an integer').min(1, 'must be at least 1');
const size = z.union([z.number().int().min(0), z.string()]).refine((v) => typeof v === 'number' || isSize(v), 'must be a size such as 1G, 512M or a number of bytes');
const shipPolicy = z.string().refine((v) => isShipPolicy(v), 'must be "on-flush" or "interval=DURATION" (100ms to 60m, e.g. interval=10s)');
const leaseTtl = z.number().min(1, 'must be at least 1 (seconds)').max(3600, 'must be at most 3600 (seconds)');
const pathMap = z.string().refine((v) => isPathMap(v), 'must be "OLD=NEW" with two absolute paths');

function isSize(v: string): boolean {
  try {
    parseSize(v);
    return true;
  } catch {
    return false;
  }
}

function isShipPolicy(v: string): boolean {
  try {
    parseShipPolicy(v);
    return true;
  } catch {
    return false;
  }
}

function isPathMap(v: string): boolean {
  try {
    parsePathMapping(v);
    return true;
  } catch {
    return false;
  }
}

const exportSchema = z.strictObject({
  name: z.string().refine((s) => Buffer.byteLength(s) <= 4096, 'longer than 4096 bytes'),
  path: nonEmpty,
  'read-only': z.boolean().optional(),
  format: format.optional(),
  'backing-format': format.optional(),
  description: z.string().optional(),
  allow: z.array(nonEmpty).optional(),
});

export const configSchema = z
  .strictObject({
    server: z
      .strictObject({
        listen: z.array(endpoint).min(1, 'needs at least one address').optional(),
        admin: endpoint.optional(),
        'admin-token-file': nonEmpty.optional(),
        'log-level': z.enum(LOG_LEVELS).optional(),
        'read-only': z.boolean().optional(),
        'ignore-mtime': z.boolean().optional(),
        pidfile: nonEmpty.optional(),
        'exit-with-parent': z.boolean().optional(),
        'allow-path': z.array(nonEmpty).optional(),
        'backing-path-map': z.array(pathMap).optional(),
        'bitmap-sync-interval': z.number().min(0, 'must be at least 0 (0 = off)').max(3600, 'must be at most 3600 seconds').optional(),
      })
      .optional(),
    tls: z
      .strictObject({
        mode: z.enum(TLS_MODES as unknown as [TlsMode, ...TlsMode[]]),
        certificates: nonEmpty.optional(),
        'verify-peer': z.boolean().optional(),
        psk: nonEmpty.optional(),
      })
      .optional(),
    limits: z
      .strictObject({
        'allow-from': z.array(nonEmpty).optional(),
        'handshake-timeout': z.number().min(0).optional(),
        'max-connections': positive.optional(),
        'max-connections-per-client': positive.optional(),
        'max-overlays': positive.optional(),
        'min-free': size.optional(),
        'max-snapshots': positive.max(MAX_SNAPSHOTS_LIMIT, `must be at most ${MAX_SNAPSHOTS_LIMIT}`).optional(),
      })
      .optional(),
    export: z.array(exportSchema).optional(),
    overlays: z.strictObject({ base: nonEmpty, 'base-format': format.optional(), dir: nonEmpty, 'create-dir': z.boolean().optional(), 'match-identity': z.boolean().optional(), store: nonEmpty.optional(), ship: shipPolicy.optional(), 'lease-ttl': leaseTtl.optional() }).optional(),
    ephemeral: z
      .strictObject({ base: nonEmpty, 'base-format': format.optional(), name: z.string().optional(), dir: nonEmpty.optional(), 'create-dir': z.boolean().optional() })
      .optional(),
    'object-store': z
      .strictObject({
        endpoint: nonEmpty.optional(),
        region: nonEmpty.optional(),
        addressing: z.enum(['path', 'virtual']).optional(),
        'max-gets': positive.optional(),
        'timeout-ms': positive.optional(),
        retries: z.number().int().min(0).optional(),
        'cache-dir': nonEmpty.optional(),
        'cache-size': z.string().refine(isSize, 'must be a size such as 10G').optional(),
        'cache-min-free': z.string().refine(isSize, 'must be a size such as 1G').optional(),
      })
      .optional(),
  })
  .superRefine((cfg, ctx) => {
    const seen = new Map<string, number>();
    cfg.export?.forEach((e, i) => {
      const first = seen.get(e.name);
      if (first !== undefined) {
        ctx.addIssue({ code: 'custom', path: ['export', i, 'name'], message: `"${e.name}" is already the name of export[${first}]` });
      } else seen.set(e.name, i);
    });
    if (cfg.overlays && cfg.ephemeral) {
      ctx.addIssue({ code: 'custom', path: ['ephemeral'], message: 'cannot be combined with [overlays] (choose per-machine or per-connection overlays)' });
    }
    const admin = cfg.server?.admin;
    if (admin && !admin.startsWith('unix:') && !cfg.server?.['admin-token-file']) {
      ctx.addIssue({ code: 'custom', path: ['server', 'admin'], message: 'a TCP admin address needs admin-token-file (the bearer token clients must send)' });
    }
    if (cfg.tls && cfg.tls.mode !== 'off' && !cfg.tls.certificates && !cfg.tls.psk) {
      ctx.addIssue({ code: 'custom', path: ['tls', 'mode'], message: `"${cfg.tls.mode}" needs certificates = DIR or psk = FILE` });
    }
  });

type RawConfig = z.infer<typeof configSchema>;

/** Copy the keys that are set (undefined stays "not said", so the command line's defaults apply). */
function set<K extends keyof FileOptions>(out: FileOptions, key: K, value: FileOptions[K] | undefined): void {
  if (value !== undefined) out[key] = value;
}

export function toOptions(cfg: RawConfig, dir: string): FileOptions {
  // s3:// images (base, exports) are addresses, not paths relative to the file.
  const abs = (p: string) => (isObjectStoreUri(p) ? p : path.resolve(dir, p));
  const absEndpoint = (e: ListenEndpoint): ListenEndpoint => ('path' in e ? { path: abs(e.path) } : e);
  const s = cfg.server ?? {};
  const out: FileOptions = {
    export: (cfg.export ?? []).map((e) => ({
      name: e.name,
      path: abs(e.path),
      readOnly: e['read-only'],
      description: e.description,
      format: e.format,
      backingFormat: e['backing-format'],
      ...(e.allow ? { allow: e.allow } : {}),
    })),
  };
  set(out, 'listen', s.listen?.map((l) => absEndpoint(parseEndpoint(l)!)));
  set(out, 'admin', s.admin === undefined ? undefined : (absEndpoint(parseEndpoint(s.admin)!) as AdminEndpoint));
  set(out, 'adminTokenFile', s['admin-token-file'] && abs(s['admin-token-file']));
  set(out, 'logLevel', s['log-level']);
  set(out, 'readOnly', s['read-only']);
  set(out, 'ignoreMtime', s['ignore-mtime']);
  set(out, 'pidfile', s.pidfile && abs(s.pidfile));
  set(out, 'exitWithParent', s['exit-with-parent']);
  set(out, 'allowPath', s['allow-path']?.map(abs));
  set(out, 'backingPathMap', s['backing-path-map']?.map((m) => parsePathMapping(m)));
  set(out, 'bitmapSyncInterval', s['bitmap-sync-interval']);
  if (cfg.tls) {
    set(out, 'tls', cfg.tls.mode);
    set(out, 'tlsCertificates', cfg.tls.certificates && abs(cfg.tls.certificates));
    set(out, 'tlsVerifyPeer', cfg.tls['verify-peer']);
    set(out, 'tlsPsk', cfg.tls.psk && abs(cfg.tls.psk));
  }
  setLimitsAndOverlays(out, cfg, abs);
  setObjectStore(out, cfg, abs);
  return out;
}

/** [limits], [overlays] and [ephemeral]. */
function setLimitsAndOverlays(out: FileOptions, cfg: RawConfig, abs: (p: string) => string): void {
  const l = cfg.limits ?? {};
  set(out, 'allowFrom', l['allow-from']);
  set(out, 'handshakeTimeout', l['handshake-timeout']);
  set(out, 'maxConnections', l['max-connections']);
  set(out, 'maxConnectionsPerClient', l['max-connections-per-client']);
  set(out, 'maxOverlays', l['max-overlays']);
  set(out, 'maxSnapshots', l['max-snapshots']);
  set(out, 'minFree', l['min-free'] === undefined ? undefined : typeof l['min-free'] === 'number' ? l['min-free'] : parseSize(l['min-free']));
  if (cfg.overlays) {
    out.base = abs(cfg.overlays.base);
    set(out, 'baseFormat', cfg.overlays['base-format']);
    out.overlayDir = abs(cfg.overlays.dir);
    set(out, 'overlayDirMatchIdentity', cfg.overlays['match-identity']);
    set(out, 'overlayStore', cfg.overlays.store);
    set(out, 'ship', cfg.overlays.ship);
    set(out, 'leaseTtl', cfg.overlays['lease-ttl']);
    set(out, 'createDirs', cfg.overlays['create-dir']);
  }
  if (cfg.ephemeral) {
    out.ephemeral = true;
    out.base = abs(cfg.ephemeral.base);
    set(out, 'baseFormat', cfg.ephemeral['base-format']);
    set(out, 'name', cfg.ephemeral.name);
    set(out, 'ephemeralDir', cfg.ephemeral.dir && abs(cfg.ephemeral.dir));
    set(out, 'createDirs', cfg.ephemeral['create-dir']);
  }
}

/** [object-store]. */
function setObjectStore(out: FileOptions, cfg: RawConfig, abs: (p: string) => string): void {
  const os = cfg['object-store'] ?? {};
  set(out, 's3Endpoint', os.endpoint);
  set(out, 's3Region', os.region);
  set(out, 's3Addressing', os.addressing);
  set(out, 's3MaxGets', os['max-gets']);
  set(out, 's3Timeout', os['timeout-ms']);
  set(out, 's3Retries', os.retries);
  set(out, 'cacheDir', os['cache-dir'] && abs(os['cache-dir']));
  set(out, 'cacheSize', os['cache-size']);
  set(out, 'cacheMinFree', os['cache-min-free']);
}
