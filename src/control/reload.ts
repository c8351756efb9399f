/**
 * Reloading the configuration (SIGHUP or POST /reload).
 *
 *   read file ─► parse + validate ─► exports = command-line exports + file exports
 *             ─► ReloadableExports.apply() (opens new devices first; all or nothing)
 *
 * Any failure (syntax, schema, a missing image, a refused change) leaves the running
 * server exactly as it was and is logged with the reason; the server keeps running.
 * Only the [[export]] list (and log-level) apply live; a change of listen addresses,
 * the admin endpoint or the overlay settings is reported as needing a restart.
 */
import type { Logger } from '../logging.js';
import type { StaticExportConfig } from '../server/exports.js';
import type { FileOptions } from './config.js';
import type { ReloadableExports, ReloadDiff } from './export-set.js';

export interface ReloadResult extends ReloadDiff {
  /** Settings that changed in the file but take effect only at restart. */
  readonly restartNeeded: string[];
}

export interface ReloaderOptions {
  readonly configFile?: string;
  /** The file as read at start-up (to tell which restart-only settings changed). */
  readonly initial?: FileOptions;
  /** Exports named on the command line: kept on every reload. */
  readonly cliExports: readonly StaticExportConfig[];
  /** --read-only given on the command line (applies to every export). */
  readonly cliReadOnly: boolean;
  readonly exports: ReloadableExports;
  /** Refuses an export list the running server cannot honour (e.g. allow= without TLS identities). */
  readonly check?: (configs: readonly StaticExportConfig[]) => void;
  readonly log: Logger;
}

/** Everything but the export list, read-only and log-level applies at the next start only. */
const RESTART_ONLY = (Object.keys({
  listen: 0, admin: 0, adminTokenFile: 0, ignoreMtime: 0, pidfile: 0, exitWithParent: 0, allowPath: 0, backingPathMap: 0, bitmapSyncInterval: 0,
  base: 0, baseFormat: 0, overlayDir: 0, overlayDirMatchIdentity: 0, overlayStore: 0, ship: 0, leaseTtl: 0, ephemeral: 0, ephemeralDir: 0, createDirs: 0, name: 0,
  tls: 0, tlsCertificates: 0, tlsVerifyPeer: 0, tlsPsk: 0,
  allowFrom: 0, handshakeTimeout: 0, maxConnections: 0, maxConnectionsPerClient: 0, maxOverlays: 0, minFree: 0, maxSnapshots: 0,
  s3Endpoint: 0, s3Region: 0, s3Addressing: 0, s3MaxGets: 0, s3Timeout: 0, s3Retries: 0, cacheDir: 0, cacheSize: 0, cacheMinFree: 0,
} satisfies Record<Exclude<keyof FileOptions, 'export' | 'logLevel' | 'readOnly'>, 0>) as Array<keyof FileOptions>);

export class Reloader {
  private running: Promise<ReloadResult> | undefined;

  constructor(private readonly o: ReloaderOptions) {}

  /** Reload now; concurrent calls share one run. Rejects (nothing changed) on failure. */
  reload(trigger: string): Promise<ReloadResult> {
    this.running ??= this.run(trigger).finally(() => (this.running = undefined));
    return this.running;
  }

  /** SIGHUP reloads; failures are logged, never fatal. */
  installSighup(): void {
    process.on('SIGHUP', () => {
      this.reload('SIGHUP').catch(() => {
        // Already logged by run().
      });
    });
  }

  private async run(trigger: string): Promise<ReloadResult> {
    const { log } = this.o;
    if (!this.o.configFile) {
      const err = new Error('no --config file: nothing to reload');
      log.warn({ trigger }, err.message);
      throw err;
    }
    try {
      // Imported here: a serve without --config never loads the TOML parser and zod.
      const { loadConfigFile } = await import('./config.js');
      const file = await loadConfigFile(this.o.configFile);
      const readOnly = this.o.cliReadOnly || Boolean(file.readOnly);
      const configs = [...file.export, ...this.o.cliExports].map((c) => (readOnly ? { ...c, readOnly: true } : c));
      this.o.check?.(configs);
      const diff = await this.o.exports.apply(configs);
      if (file.logLevel && file.logLevel !== log.level) log.level = file.logLevel;
      const restartNeeded = RESTART_ONLY.filter((k) => JSON.stringify(file[k]) !== JSON.stringify(this.o.initial?.[k]));
      log.info({ trigger, file: this.o.configFile, ...diff }, 'configuration reloaded');
      if (restartNeeded.length) log.warn({ settings: restartNeeded }, 'changed settings take effect only after a restart');
      return { ...diff, restartNeeded };
    } catch (err) {
      log.error({ trigger, file: this.o.configFile, reason: (err as Error).message }, 'reload failed: configuration unchanged');
      throw err;
    }
  }
}
