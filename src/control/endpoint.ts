/**
 * Endpoint syntax shared by the config file ([listen], admin), `serve --admin` and `ctl
 * --admin`. Kept apart from the config schema so that option parsing in the CLI does not
 * load the TOML parser and zod (cli/main.ts registers every command at start-up).
 */
import type { ListenEndpoint } from '../server/listener.js';

/** Where the admin API listens. */
export type AdminEndpoint = { readonly path: string } | { readonly host: string; readonly port: number };

/** "host:port", "[v6]:port" or "unix:/path" → endpoint; undefined when malformed. */
export function parseEndpoint(text: string): ListenEndpoint | undefined {
  if (text.startsWith('unix:')) {
    const p = text.slice(5);
    return p.length > 0 ? { path: p } : undefined;
  }
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port > 65535) return undefined;
  return { host: (m[1] ?? m[2])!, port };
}
