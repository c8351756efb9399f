/**
 * The admin API and metrics of fleet machines (docs/fleet.md), when `serve` runs with
 * --overlay-store:
 *
 *   GET  /machines                the machines this server serves: lease generation and time
 *                                 left, previous owner, last ship, ship lag (bytes, seconds)
 *   POST /machines/NAME/release   ship NAME, refuse it here, hand its lease back (a move:
 *                                 the machine's clients reconnect to another server)
 *
 * Gauges (per machine served here): cownbd_machine_ship_lag_bytes, …_ship_lag_seconds,
 * …_lease_remaining_seconds, …_lease_generation, …_ships_total, …_failed_ships_total.
 */
import type { FastifyInstance } from 'fastify';
import { Gauge, type Registry } from 'prom-client';
import type { FleetProvider, MachineView } from '../server/fleet-provider.js';
import { ApiError } from './api-error.js';

export function fleetRoutes(fleet: FleetProvider): (app: FastifyInstance) => void {
  return (app) => {
    app.get('/machines', async () => ({ server: fleet.serverId, machines: await fleet.machinesView() }));
    app.post<{ Params: { name: string } }>('/machines/:name/release', async (req) => {
      const done = await fleet.release(req.params.name);
      if (!done) throw new ApiError(404, `machine "${req.params.name}" is not served by this server (${fleet.serverId})`);
      return { machine: req.params.name, released: true, ...done };
    });
  };
}

export function addFleetGauges(registry: Registry, fleet: FleetProvider): void {
  const gauges: Array<[string, string, (m: MachineView) => number]> = [
    ['cownbd_machine_ship_lag_bytes', 'Bytes of written chunks not yet shipped to the object store', (m) => m.lagBytes],
    ['cownbd_machine_ship_lag_seconds', 'Age of the oldest write not yet shipped', (m) => m.lagSeconds],
    ['cownbd_machine_lease_remaining_seconds', 'Lease validity left on this server\'s clock', (m) => m.leaseRemainingMs / 1000],
    ['cownbd_machine_lease_generation', 'Lease generation this server holds (grows at every takeover)', (m) => m.generation],
    ['cownbd_machine_ships_total', 'Ships that advanced the machine head', (m) => m.ships],
    ['cownbd_machine_failed_ships_total', 'Ships that failed (store unreachable, fenced)', (m) => m.failedShips],
  ];
  for (const [name, help, value] of gauges) {
    new Gauge({
      name,
      help,
      labelNames: ['machine', 'owner'],
      registers: [registry],
      async collect() {
        this.reset();
        for (const m of await fleet.machinesView()) this.set({ machine: m.name, owner: m.owner }, value(m));
      },
    });
  }
}
