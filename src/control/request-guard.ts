/**
 * Browser-facing defences of the admin API (docs/security.md "Admin API"). The API has no
 * cookies, but a Unix socket forwarded with `ssh -L`, or a TCP endpoint without a browser
 * token, is reachable by any web page the operator opens: a page can send "simple"
 * cross-origin requests (form posts, `fetch` with `mode: "no-cors"` and a text/plain
 * body) without a CORS preflight, and DNS rebinding lets it read the answers too.
 *
 *   every request, no token:   Host must be a local name (loopback address, a name
 *                              without a dot such as `localhost`, `*.localhost`) or the
 *                              configured endpoint host: a rebound attacker name is not
 *   POST / PUT / PATCH / DELETE:
 *     Origin (else Referer)    when sent, must name the same host:port as Host; browsers
 *                              always send Origin on cross-origin state-changing requests
 *     Content-Type             absent (no body) or application/json: a form or a
 *                              no-cors fetch can only send text/plain, urlencoded or
 *                              multipart, and JSON needs a preflight we never answer
 *
 * Pure checks: each returns the refusal message, or undefined when the request may go on.
 */

const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

export interface RequestFacts {
  readonly method: string;
  readonly host: string | undefined;
  readonly origin: string | undefined;
  readonly referer: string | undefined;
  readonly contentType: string | undefined;
}

/** The host part of a Host header ("[::1]:8080" → "::1", "Example:80" → "example"). */
export function hostName(host: string): string {
  const h = host.trim().toLowerCase();
  if (h.startsWith('[')) return h.slice(1, h.indexOf(']') >>> 0);
  const colon = h.lastIndexOf(':');
  return colon >= 0 ? h.slice(0, colon) : h;
}

/** A name only this machine can mean: loopback addresses, dotless names, *.localhost. */
export function isLocalName(name: string): boolean {
  if (name === '::1' || name === '0:0:0:0:0:0:0:1') return true;
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(name)) return true;
  if (name === 'localhost' || name.endsWith('.localhost')) return true;
  // No dot: not a public DNS name an attacker could point at 127.0.0.1 (`localhost`, and
  // `cownbd` as in `curl --unix-socket S http://cownbd/...`).
  return name.length > 0 && !name.includes('.') && !name.includes(':');
}

/**
 * DNS rebinding: without a token only local names (or the host the endpoint was
 * configured with) may appear in Host. `configuredHost` is undefined for a Unix socket.
 */
export function hostProblem(f: RequestFacts, configuredHost: string | undefined): string | undefined {
  if (f.host === undefined || f.host === '') return 'missing Host header';
  const name = hostName(f.host);
  if (isLocalName(name)) return undefined;
  if (configuredHost !== undefined && name === configuredHost.toLowerCase()) return undefined;
  return `Host "${f.host}" is not a local name (localhost, a loopback address${configuredHost ? ` or ${configuredHost}` : ''}): refused (DNS rebinding)`;
}

/** Cross-site request forgery: origin and body type of a state-changing request. */
export function crossSiteProblem(f: RequestFacts): string | undefined {
  if (!STATE_CHANGING.has(f.method)) return undefined;
  const claimed = f.origin ?? f.referer;
  const which = f.origin !== undefined ? 'Origin' : 'Referer';
  if (claimed !== undefined) {
    let from: string | undefined;
    try {
      from = new URL(claimed).host.toLowerCase();
    } catch {
      from = undefined; // "null" (sandboxed frames, file: pages) or garbage
    }
    if (from === undefined || from !== (f.host ?? '').trim().toLowerCase()) {
      return `${which} "${claimed}" does not match Host "${f.host ?? ''}": cross-origin ${f.method} refused`;
    }
  }
  if (f.contentType !== undefined && f.contentType !== '') {
    const type = f.contentType.split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') return `Content-Type "${f.contentType}" refused for ${f.method}: send no body, or application/json`;
  }
  return undefined;
}
