/**
 * GET /: the status page. Plain HTML with a small inline script, served from this module
 * (no build step, no files to install): it polls the admin API every 2 s and shows the
 * exports (chain, bytes per layer, connections), a picture of each overlay's allocation
 * (256 slices of the disk, darker = more of that slice written to the top overlay), the
 * connections, live read/write rates computed from the counters' deltas, a few minutes of
 * rate history per export (kept by the page itself: the server stores no history), and the
 * server's facts (version, listeners, uptime; GET /server).
 *
 * The page itself carries no data, so it is served without the bearer token; on a TCP
 * admin endpoint open it as http://HOST:PORT/#token=TOKEN: the script sends the token
 * from the URL fragment (never sent to the server or logged) with each API call. All data
 * is inserted with textContent, never as HTML.
 */
import type { FastifyInstance } from 'fastify';

export const STATUS_PAGE_BUCKETS = 256;
/** Rate samples the page keeps per export: 2 s apart, so 4 minutes. */
const HISTORY_SAMPLES = 120;

/** What GET /server reports (and the page's header line shows). */
export interface ServerFacts {
  readonly version: string;
  /** "nbd://127.0.0.1:10809", "unix:/run/cownbd/nbd.sock", … */
  readonly listeners: readonly string[];
  readonly startedAt: Date;
}

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
  canvas.map { border: 1px solid #bbb; image-rendering: pixelated; display: block; width: 256px; height: 14px; }
  canvas.history { border: 1px solid #ddd; display: block; width: 120px; height: 28px; }
  .muted { color: #777; } .chain { font-family: ui-monospace, monospace; font-size: 12px; }
  /* Wrap between layers, never inside one ("cow vm1.cow = 1.0 MiB" stays on one line). */
  .chain .layer { white-space: nowrap; }
  /* Wide tables scroll inside their box instead of widening the page (800 px screens). */
  .scroll { max-width: 100%; overflow-x: auto; }
  .legend { font-size: 12px; color: #555; margin: .3em 0; } .swatch { display: inline-block; width: 1.2em; height: .8em; border: 1px solid #bbb; vertical-align: middle; }
  #error { color: #b00; }
</style>
</head>
<body>
<h1>cownbd</h1>
<div class="muted" id="server"></div>
<div class="muted">refreshed <span id="updated">never</span> · every 2 s · <span id="error"></span></div>
<h2>Exports</h2>
<div class="legend" id="legend">Allocation: the disk in ${STATUS_PAGE_BUCKETS} slices, left = offset 0.
  <span class="swatch" style="background:#fff"></span> nothing written to the top overlay ·
  <span class="swatch" style="background:rgb(170,170,255)"></span> partly ·
  <span class="swatch" style="background:rgb(30,30,255)"></span> fully written.
  History: the last ${HISTORY_SAMPLES * 2 / 60} minutes of <span style="color:#1a7f37">read/s</span> and <span style="color:#0550ae">write/s</span>, kept by this page since it was opened.</div>
<div class="scroll"><table id="exports"><thead><tr><th>name</th><th>kind</th><th>size</th><th>mode</th><th>clients</th><th>read/s</th><th>write/s</th><th>history</th><th>allocation of the top overlay</th><th>chain (bytes each layer provides)</th></tr></thead><tbody></tbody></table></div>
<h2>Connections</h2>
<div class="scroll"><table id="connections"><thead><tr><th>id</th><th>export</th><th>client</th><th>identity</th><th>since</th><th>read</th><th>written</th><th>read/s</th><th>write/s</th><th>in flight</th></tr></thead><tbody></tbody></table></div>
<script>
"use strict";
const BUCKETS = ${STATUS_PAGE_BUCKETS};
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? { authorization: "Bearer " + token } : {};
let previous = { at: 0, conns: new Map() };
const HISTORY = ${HISTORY_SAMPLES};
const history = new Map(); // export name -> [{ read, write }], oldest first

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

function drawHistory(canvas, samples) {
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const peak = Math.max(1, ...samples.map((s) => Math.max(s.read, s.write)));
  for (const [key, color] of [["read", "#1a7f37"], ["write", "#0550ae"]]) {
    ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
    samples.forEach((s, i) => {
      const x = (canvas.width * (HISTORY - samples.length + i)) / (HISTORY - 1);
      const y = canvas.height - 2 - ((canvas.height - 4) * s[key]) / peak;
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.stroke();
  }
  canvas.dataset.samples = String(samples.length);
  canvas.title = "peak " + bytes(Math.round(peak)) + "/s over the last " + samples.length + " samples";
}
function layerSpans(cellEl, chain) {
  chain.forEach((l, i) => {
    if (i) cellEl.append("  ▸  ");
    const span = document.createElement("span"); span.className = "layer";
    span.textContent = l.format + " " + (l.path || "?").split("/").pop() + " = " + bytes(l.allocatedBytes);
    cellEl.appendChild(span);
  });
}
async function showServer() {
  const s = await get("/server");
  const up = Math.round(s.uptimeSeconds);
  const uptime = up >= 86400 ? Math.floor(up / 86400) + " d " + Math.floor((up % 86400) / 3600) + " h" : up >= 3600 ? Math.floor(up / 3600) + " h " + Math.floor((up % 3600) / 60) + " min" : Math.floor(up / 60) + " min " + (up % 60) + " s";
  document.getElementById("server").textContent = "cownbd " + s.version + " · listening on " + (s.listeners.join(", ") || "—") + " · up " + uptime;
}

async function refresh() {
  const [ex, co] = await Promise.all([get("/exports"), get("/connections"), showServer()]);
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
    const samples = history.get(e.name) || [];
    if (dt) samples.push({ read: r.read, write: r.write });
    if (samples.length > HISTORY) samples.splice(0, samples.length - HISTORY);
    history.set(e.name, samples);
    const spark = document.createElement("canvas");
    spark.className = "history"; spark.width = 240; spark.height = 56; spark.dataset.export = e.name;
    row.insertCell().appendChild(spark);
    drawHistory(spark, samples);
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
    if (e.error) cell(row, "error: " + e.error, "chain");
    else layerSpans(cell(row, "", "chain"), e.chain);
    rows.push(row);
  }
  tbody.replaceChildren(...rows);
  // Exports that are gone take their history with them.
  for (const name of history.keys()) if (!ex.exports.some((e) => e.name === name)) history.delete(name);

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

/**
 * Fastify plugin: GET / (exempt from the bearer token: the page holds no data) and
 * GET /server (the server's facts; behind the token like every other API route).
 */
export function statusPageRoutes(facts: () => ServerFacts): (app: FastifyInstance) => void {
  return (app) => {
    app.get('/', async (_req, reply) => {
      reply.header('content-type', 'text/html; charset=utf-8');
      reply.header('content-security-policy', "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:");
      return PAGE;
    });
    app.get('/server', async () => {
      const f = facts();
      return { version: f.version, listeners: f.listeners, startedAt: f.startedAt.toISOString(), uptimeSeconds: (Date.now() - f.startedAt.getTime()) / 1000 };
    });
  };
}
