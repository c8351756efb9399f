/**
 * The control plane of a running `serve`: configuration reload (SIGHUP), and the admin
 * API when an endpoint is configured. Built once after the NBD listeners are up; it only
 * reads the server's registries and calls the export set's operations, so the data path
 * never depends on it.
 */
import type { Logger } from '../logging.js';
import type { NbdServer } from '../server/listener.js';
import type { AdminEndpoint } from './config.js';
import type { ReloadableExports } from './export-set.js';
import { Reloader, type ReloaderOptions } from './reload.js';

export interface ControlPlaneOptions {
  readonly server: NbdServer;
  readonly exports: ReloadableExports;
  readonly log: Logger;
  readonly reload: Omit<ReloaderOptions, 'exports' | 'log'>;
  readonly admin?: AdminEndpoint;
  readonly adminTokenFile?: string;
}

export interface ControlPlane {
  readonly reloader: Reloader;
}

export async function startControlPlane(o: ControlPlaneOptions): Promise<ControlPlane> {
  const reloader = new Reloader({ ...o.reload, exports: o.exports, log: o.log });
  reloader.installSighup();
  return { reloader };
}
