/**
 * The control plane of a running `serve`: configuration reload and, when an endpoint is
 * configured, the admin API (with metrics and the status page). Built once after the NBD
 * listeners are up; it reads the server's registries and calls the export set's
 * operations, so the data path never depends on it. It changes nothing process-wide:
 * the CLI installs the SIGHUP handler (Reloader.installSighup) and prints the admin
 * address, so a library user's process keeps its own signals and stdout.
 *
 * The admin API's code (fastify, prom-client, the status page) is imported only when an
 * endpoint is configured: a plain `serve` never loads it.
 */
import { readFileSync } from 'node:fs';
import type { FastifyInstance } from 'fastify';
import type { Registry } from 'prom-client';
import type { FleetProvider } from '../server/fleet-provider.js';
import type { AdminApi } from './admin-api.js';
import { readConfigText } from './config-read.js';
import type { AdminEndpoint } from './endpoint.js';
import type { ObjectStoreStats } from './metrics.js';
import { Operations, type OperationsOptions } from './operations.js';
import { Reloader, type ReloaderOptions } from './reload.js';

export interface ControlPlaneOptions extends OperationsOptions {
  readonly reload: Omit<ReloaderOptions, 'exports' | 'log'>;
  readonly admin?: AdminEndpoint;
  readonly adminTokenFile?: string;
  /** Object-store counters for /metrics, when this server uses s3:// images. */
  readonly objectStoreStats?: () => ObjectStoreStats | undefined;
  /** Fleet machines (--overlay-store): their routes and gauges (fleet-routes.ts). */
  readonly fleet?: FleetProvider;
}

export interface ControlPlane {
  readonly reloader: Reloader;
  readonly ops: Operations;
  readonly api?: AdminApi;
}

/** Thrown when the admin API cannot start (serve reports it as an operator error). */
export class ControlPlaneError extends Error {
  override name = 'ControlPlaneError';
}

export async function startControlPlane(o: ControlPlaneOptions): Promise<ControlPlane> {
  const reloader = new Reloader({ ...o.reload, exports: o.exports, log: o.log });
  const ops = new Operations({
    server: o.server,
    guard: o.guard,
    exports: o.exports,
    overlays: o.overlays,
    ephemeralName: o.ephemeralName,
    inspect: o.inspect,
    io: o.io,
    maxSnapshots: o.maxSnapshots,
    log: o.log,
  });
  if (!o.admin) return { reloader, ops };
  const token = o.adminTokenFile ? await readToken(o.adminTokenFile) : undefined;
  let api: AdminApi;
  try {
    const [{ startAdminApi }, { createMetrics }, { statusPageRoutes }] = await Promise.all([import('./admin-api.js'), import('./metrics.js'), import('./status-page.js')]);
    const metrics = createMetrics(o.server, ops, o.objectStoreStats);
    const fleetPlugins = o.fleet ? await fleetPlugin(o.fleet, metrics.registry) : [];
    const facts = { version: packageVersion(), startedAt: new Date(), listeners: () => o.server.listeningOn() };
    const statusPage = statusPageRoutes(() => ({ version: facts.version, startedAt: facts.startedAt, listeners: facts.listeners() }));
    api = await startAdminApi({ endpoint: o.admin, token, ops, reload: () => reloader.reload('api'), snapshot: (name) => ops.snapshot(name), plugins: [metrics.route, statusPage, ...fleetPlugins], log: o.log });
  } catch (err) {
    throw new ControlPlaneError(`cannot start the admin API on ${'path' in o.admin ? o.admin.path : `${o.admin.host}:${o.admin.port}`}: ${(err as Error).message}`);
  }
  o.server.onStop(() => api.close());
  o.log.info({ admin: api.address }, 'admin API listening');
  return { reloader, ops, api };
}

/** cownbd's version from its package.json (dist/control → ../../package.json). */
async function fleetPlugin(fleet: FleetProvider, registry: Registry): Promise<Array<(app: FastifyInstance) => void>> {
  const { addFleetGauges, fleetRoutes } = await import('./fleet-routes.js');
  addFleetGauges(registry, fleet);
  return [fleetRoutes(fleet)];
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

async function readToken(file: string): Promise<string> {
  let token: string;
  try {
    // Like the config file: a FIFO or device is refused at once, never waited on (config-read.ts).
    token = (await readConfigText(file, 4096, 'a token file')).trim();
  } catch (err) {
    throw new ControlPlaneError(`admin token file ${file}: ${(err as Error).message}`);
  }
  if (token.length < 16) throw new ControlPlaneError(`admin token file ${file}: the token must be at least 16 characters`);
  return token;
}
