/**
 * The work of `cownbd ctl` (registered in ctl-command.ts, loaded when a ctl command runs):
 * one HTTP request to the admin API of a running `serve`, printed as a table when stdout
 * is a terminal, JSON otherwise or with --json. An API error becomes one line on stderr
 * ("cownbd: export "vm1" has 2 connected client(s)…") and status 1.
 */
import http from 'node:http';
import { readFileSync } from 'node:fs';
import { parseEndpoint } from '../control/endpoint.js';

export interface CtlOptions {
  admin?: string;
  tokenFile?: string;
  json?: boolean;
}

interface Reply {
  status: number;
  body: unknown;
  text: string;
}

function request(o: CtlOptions, method: string, urlPath: string): Promise<Reply> {
  const spec = o.admin ?? process.env.COWNBD_ADMIN;
  if (!spec) throw new Error('no admin endpoint: give --admin unix:/path (or HOST:PORT), or set COWNBD_ADMIN');
  const endpoint = parseEndpoint(spec.replace(/^https?:\/\//, ''));
  if (!endpoint || 'fd' in endpoint) throw new Error(`--admin must be unix:/path or HOST:PORT (got "${spec}")`);
  const headers: Record<string, string> = {};
  if (o.tokenFile) headers.authorization = `Bearer ${readFileSync(o.tokenFile, 'utf8').trim()}`;
  const target = 'path' in endpoint ? { socketPath: endpoint.path } : { host: endpoint.host, port: endpoint.port };
  return new Promise((resolve, reject) => {
    const req = http.request({ ...target, method, path: urlPath, headers, timeout: 60_000 }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        let body: unknown = text;
        if ((res.headers['content-type'] ?? '').includes('json')) body = JSON.parse(text);
        resolve({ status: res.statusCode ?? 0, body, text });
      });
    });
    req.on('timeout', () => req.destroy(new Error('admin API did not answer within 60 s')));
    req.on('error', (err) => reject(new Error(`cannot reach the admin API at ${spec}: ${err.message}`)));
    req.end();
  });
}

async function call(o: CtlOptions, method: string, urlPath: string): Promise<unknown> {
  const r = await request(o, method, urlPath);
  if (r.status >= 400) {
    const message = typeof r.body === 'object' && r.body && 'error' in r.body ? String((r.body as { error: unknown }).error) : r.text;
    // The API speaks in query parameters; a ctl user types flags.
    throw new Error(`${method} ${urlPath}: ${r.status}: ${message.replace(/add \?force=true/g, 'add --force')}`);
  }
  return r.body;
}

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function formatTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((cell, c) => cell.padEnd(widths[c]!)).join('  ').trimEnd()).join('\n') + '\n';
}

interface ExportRow {
  name: string;
  kind: string;
  size: number;
  readOnly: boolean;
  connections: number;
  chain: Array<{ depth: number; format: string; path?: string; allocatedBytes: number }>;
  error?: string;
}

interface ConnectionRow {
  id: number;
  export: string;
  client: string;
  since: string;
  bytesRead: number;
  bytesWritten: number;
  inFlight: number;
}

function exportsTable(body: { exports: ExportRow[] }): string {
  const rows = [['NAME', 'KIND', 'SIZE', 'MODE', 'CONNS', 'CHAIN (bytes each layer provides)']];
  for (const e of body.exports) {
    const chain = e.error ? `error: ${e.error}` : e.chain.map((l) => `${l.format}:${l.path?.split('/').pop() ?? '?'}=${bytes(l.allocatedBytes)}`).join(' > ');
    rows.push([e.name, e.kind, bytes(e.size), e.readOnly ? 'ro' : 'rw', String(e.connections), chain]);
  }
  return formatTable(rows);
}

function connectionsTable(body: { connections: ConnectionRow[] }): string {
  const rows = [['ID', 'EXPORT', 'CLIENT', 'SINCE', 'READ', 'WRITTEN', 'IN FLIGHT']];
  for (const c of body.connections) rows.push([String(c.id), c.export, c.client, c.since, bytes(c.bytesRead), bytes(c.bytesWritten), String(c.inFlight)]);
  return formatTable(rows);
}

interface MachineRow {
  name: string;
  generation: number;
  leaseRemainingMs: number;
  previousOwner: string | null;
  lastShip: string | null;
  lagBytes: number;
  lagSeconds: number;
  policy: string;
}

function machinesTable(body: { server: string; machines: MachineRow[] }): string {
  const rows = [['NAME', 'GEN', 'LEASE LEFT', 'LAST SHIP', 'LAG', 'POLICY', 'TAKEN FROM']];
  for (const m of body.machines) {
    rows.push([m.name, String(m.generation), `${(m.leaseRemainingMs / 1000).toFixed(1)}s`, m.lastShip ?? '-', `${bytes(m.lagBytes)} ${m.lagSeconds.toFixed(1)}s`, m.policy, m.previousOwner ?? '-']);
  }
  return `server ${body.server}\n${formatTable(rows)}`;
}

/** A one-object reply (snapshot, reset, delete, reload) as FIELD  VALUE lines. */
export function resultTable(body: Record<string, unknown>): string {
  const rows = [['FIELD', 'VALUE']];
  for (const [k, v] of Object.entries(body)) rows.push([k, typeof v === 'object' && v !== null ? JSON.stringify(v) : String(v)]);
  return formatTable(rows);
}

function print(o: CtlOptions, body: unknown, table?: (b: never) => string): void {
  if (o.json || !process.stdout.isTTY || !table) process.stdout.write(`${typeof body === 'string' ? body : JSON.stringify(body, null, 2)}\n`);
  else process.stdout.write(table(body as never));
}

/** What a reply is printed as on a terminal: a table, or the body as it came. */
export type CtlView = 'exports' | 'connections' | 'machines' | 'result' | 'text';

/** One ctl command: call the API, print the reply (metrics: the exposition text as is). */
export async function runCtl(o: CtlOptions, method: string, urlPath: string, view?: CtlView): Promise<void> {
  const body = await call(o, method, urlPath);
  if (view === 'text') process.stdout.write(String(body));
  else print(o, body, TABLES[view ?? 'result']);
}

const TABLES: Record<Exclude<CtlView, 'text'>, (b: never) => string> = {
  exports: exportsTable,
  connections: connectionsTable,
  machines: machinesTable,
  result: (b: unknown) => (typeof b === 'object' && b !== null && !Array.isArray(b) ? resultTable(b as Record<string, unknown>) : `${JSON.stringify(b, null, 2)}\n`),
};
