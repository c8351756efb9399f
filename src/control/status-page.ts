/**
 * GET /: the status page. Plain HTML with a small inline script, served from this module
 * (no build step, no files to install): it polls the admin API every 2 s and shows the
 * exports (chain, bytes per layer, connections), a picture of each overlay's allocation
 * (256 slices of the disk, darker = more of that slice written to the top overlay), the
 * connections, and live read/write rates computed from the counters' deltas.
 *
 * The page itself carries no data, so it is served without the bearer token; on a TCP
 * admin endpoint open it as http://HOST:PORT/#token=TOKEN: the script sends the token
 * from the URL fragment (never sent to the server or logged) with each API call. All data
 * is inserted with textContent, never as HTML.
 */
import type { FastifyInstance } from 'fastify';

export const STATUS_PAGE_BUCKETS = 256;

const PAGE = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>cownbd status</title>
<link rel="icon" href="data:,">
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
  table { border-collapse: collapse; background: #fff; } th, td { padding: .3em .7em; border-bottom: 1px solid #e3e3e3; text-align: left; vertical-align: top; }
  th { background: #f0f0f0; font-weight: 600; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
  canvas.map { border: 1px solid #bbb; image-rendering: pixelated; display: block; }
  .muted { color: #777; } .chain { font-family: ui-monospace, monospace; font-size: 12px; }
  #error { color: #b00; }
</style>
</head>
<body>
<h1>cownbd</h1>
<div class="muted">refreshed <span id="updated">never</span> · every 2 s · <span id="error"></span></div>
<h2>Exports</h2>
<table id="exports"><thead><tr><th>name</th><th>kind</th><th>size</th><th>mode</th><th>clients</th><th>read/s</th><th>write/s</th><th>allocation of the top overlay</th><th>chain (bytes each layer provides)</th></tr></thead><tbody></tbody></table>
<h2>Connections</h2>
<table id="connections"><thead><tr><th>id</th><th>export</th><th>client</th><th>identity</th><th>since</th><th>read</th><th>written</th><th>read/s</th><th>write/s</th><th>in flight</th></tr></thead><tbody></tbody></table>
<script>
"use strict";
const BUCKETS = ${STATUS_PAGE_BUCKETS};
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? { authorization: "Bearer " + token } : {};
let previous = { at: 0, conns: new Map() };

function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
async function get(path) {
  const r = await fetch(path, { headers, cache: "no-store" });
  if (!r.ok) throw new Error(path + ": " + r.status + " " + ((await r.json().catch(() => ({}))).error || ""));
  return r.json();
}
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = text; if (cls) td.className = cls; return td; }

function drawMap(canvas, top) {
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#ffffff"; ctx.fillRect(0, 0, canvas.width, canvas.height);
  const w = canvas.width / top.length;
  top.forEach((f, i) => {
    if (f <= 0) return;
    // Any write shows: at least a light shade; a fully written slice is dark blue.
    const shade = Math.round(200 - 170 * Math.max(0.15, f));
    ctx.fillStyle = "rgb(" + shade + "," + shade + ",255)";
    ctx.fillRect(Math.floor(i * w), 0, Math.ceil(w), canvas.height);
  });
  canvas.dataset.allocated = top.map((f, i) => f > 0 ? i : -1).filter((i) => i >= 0).join(",");
}

async function refresh() {
  const [ex, co] = await Promise.all([get("/exports"), get("/connections")]);
  const now = performance.now();
  const dt = previous.at ? (now - previous.at) / 1000 : 0;
  const rates = new Map();
  const conns = new Map();
  for (const c of co.connections) {
    const p = previous.conns.get(c.id);
    const r = { read: p && dt ? (c.bytesRead - p.bytesRead) / dt : 0, write: p && dt ? (c.bytesWritten - p.bytesWritten) / dt : 0 };
    conns.set(c.id, c); c.rate = r;
    const e = rates.get(c.export) || { read: 0, write: 0 }; e.read += r.read; e.write += r.write; rates.set(c.export, e);
  }
  previous = { at: now, conns };

  const tbody = document.querySelector("#exports tbody");
  const rows = [];
  for (const e of ex.exports) {
    const row = document.createElement("tr"); row.dataset.export = e.name;
    cell(row, e.name === "" ? '""' : e.name); cell(row, e.kind); cell(row, bytes(e.size), "num"); cell(row, e.readOnly ? "ro" : "rw");
    cell(row, String(e.connections), "num");
    const r = rates.get(e.name) || { read: 0, write: 0 };
    cell(row, bytes(Math.round(r.read)) + "/s", "num"); cell(row, bytes(Math.round(r.write)) + "/s", "num");
    const mapCell = row.insertCell();
    if (e.kind !== "ephemeral" && e.chain.length > 1) {
      const canvas = document.createElement("canvas");
      canvas.className = "map"; canvas.width = 2 * BUCKETS; canvas.height = 14; canvas.dataset.export = e.name;
      canvas.title = "each column is 1/" + BUCKETS + " of the disk; blue = written to " + (e.chain[0].path || "the top overlay");
      mapCell.appendChild(canvas);
      get("/exports/" + encodeURIComponent(e.name) + "/allocation?buckets=" + BUCKETS).then((a) => drawMap(canvas, a.top), showError);
    } else {
      mapCell.textContent = e.kind === "ephemeral" ? "one overlay per connection" : "no overlay";
      mapCell.className = "muted";
    }
    const chain = e.error ? "error: " + e.error : e.chain.map((l) => l.format + " " + (l.path || "?").split("/").pop() + " = " + bytes(l.allocatedBytes)).join("  ▸  ");
    cell(row, chain, "chain");
    rows.push(row);
  }
  tbody.replaceChildren(...rows);

  const cbody = document.querySelector("#connections tbody");
  cbody.replaceChildren(...co.connections.map((c) => {
    const row = document.createElement("tr");
    cell(row, String(c.id), "num"); cell(row, c.export); cell(row, c.client); cell(row, c.identity || "—");
    cell(row, new Date(c.since).toLocaleTimeString()); cell(row, bytes(c.bytesRead), "num"); cell(row, bytes(c.bytesWritten), "num");
    cell(row, bytes(Math.round(c.rate.read)) + "/s", "num"); cell(row, bytes(Math.round(c.rate.write)) + "/s", "num"); cell(row, String(c.inFlight), "num");
    return row;
  }));
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  document.getElementById("error").textContent = "";
  document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
}
function showError(err) { document.getElementById("error").textContent = String(err && err.message || err); }
async function loop() { try { await refresh(); } catch (err) { showError(err); } setTimeout(loop, 2000); }
loop();
</script>
</body>
</html>
`;

/** Fastify plugin: GET / (exempt from the bearer token: the page holds no data). */
export function statusPageRoute(app: FastifyInstance): void {
  app.get('/', async (_req, reply) => {
    reply.header('content-type', 'text/html; charset=utf-8');
    reply.header('content-security-policy', "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:");
    return PAGE;
  });
}
