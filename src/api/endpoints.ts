/**
 * Listen endpoints and the URIs clients use for them: the address an NbdServer reports,
 * turned into `nbd://…` / `nbd+unix://…` (and `nbds` when TLS is required, libnbd's
 * spelling of "TLS required"), and listenOn(), the one way a server starts listening
 * (create-server.ts and the CLI's `demo`).
 */
import { readFileSync, readlinkSync } from 'node:fs';
import os from 'node:os';
import type { Logger } from '../logging.js';
import type { ListenAddress, ListenEndpoint, NbdServer } from '../server/listener.js';

/** The export's URI; `nbds` (libnbd: TLS required) when the server requires TLS. */
export function formatUri(addr: ListenAddress, exportName: string, hostname = os.hostname(), tlsRequired = false): string {
  const name = encodeURIComponent(exportName);
  const scheme = tlsRequired ? 'nbds' : 'nbd';
  if (addr.path) return `${scheme}+unix:///${name}?socket=${addr.path}`;
  if (addr.fd !== undefined) return `${scheme}+unix:///${name}?socket=(inherited-fd-${addr.fd})`;
  // A wildcard address is not somewhere a client can connect to: print this host's name.
  const raw = addr.host === '0.0.0.0' || addr.host === '::' ? hostname : addr.host;
  const host = raw && raw.includes(':') ? `[${raw}]` : raw;
  return `${scheme}://${host}:${addr.port}/${name}`;
}

/**
 * The path a listening Unix socket fd is bound to, found through its inode in
 * /proc/net/unix (Node only knows paths it bound itself); undefined when not found
 * (abstract or unnamed socket, no /proc).
 */
export function unixSocketPathOfFd(fd: number): string | undefined {
  try {
    const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
    if (!m) return undefined;
    for (const line of readFileSync('/proc/net/unix', 'utf8').split('\n').slice(1)) {
      // Num RefCount Protocol Flags Type St Inode Path
      const f = line.trim().split(/\s+/);
      if (f[6] === m[1] && f[7]?.startsWith('/')) return f.slice(7).join(' ');
    }
  } catch {
    // Not Linux, or /proc not mounted: the URI will say "inherited fd".
  }
  return undefined;
}

/** An endpoint in an operator's words (for "cannot listen on …"). */
export function describeEndpoint(e: ListenEndpoint): string {
  if ('fd' in e) return `inherited socket fd ${e.fd} (systemd socket activation)`;
  if ('path' in e) return e.path;
  return `${e.host}:${e.port}`;
}

/**
 * Listen on one endpoint and log its URI. On failure the provider is closed (nothing
 * serves it any more) and the Error names the endpoint.
 */
export async function listenOn(nbd: NbdServer, endpoint: ListenEndpoint, o: { log: Logger; defaultExport: string; tlsRequired: boolean }): Promise<ListenAddress> {
  let addr: ListenAddress;
  try {
    addr = await nbd.listen(endpoint);
    if (addr.fd !== undefined) addr = { ...addr, path: unixSocketPathOfFd(addr.fd) };
  } catch (err) {
    await nbd.provider.close().catch(() => {});
    throw new Error(`cannot listen on ${describeEndpoint(endpoint)}: ${(err as Error).message}`);
  }
  o.log.info({ uri: formatUri(addr, o.defaultExport, undefined, o.tlsRequired), ...('fd' in endpoint ? { fd: endpoint.fd } : {}) }, 'listening');
  if ((addr.host === '0.0.0.0' || addr.host === '::') && !o.tlsRequired) o.log.warn({ address: addr.host }, 'listening on every interface: NBD has no authentication here; firewall the port');
  return addr;
}
