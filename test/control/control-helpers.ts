/** Test helpers for the control plane: HTTP to the admin API, `cownbd ctl`, polling. */
import { spawn } from 'node:child_process';
import http from 'node:http';
import { CLI_PATH } from '../helpers/server.js';

export interface HttpReply {
  status: number;
  body: any;
  text: string;
}

/** One HTTP request to a Unix socket or TCP endpoint. */
export function api(target: { socketPath: string } | { port: number }, method: string, path: string, headers: Record<string, string> = {}, body?: string): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const dest = 'socketPath' in target ? { socketPath: target.socketPath } : { host: '127.0.0.1', port: target.port };
    const req = http.request({ ...dest, method, path, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => {
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          // not JSON (metrics, HTML)
        }
        resolve({ status: res.statusCode!, body: parsed, text });
      });
    });
    req.on('error', reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

/** Run `cownbd ctl ARGS` (stdout is a pipe, so JSON comes out). */
export function ctl(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI_PATH, 'ctl', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    p.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    p.once('close', (code) => resolve({ code, stdout, stderr }));
  });
}

export async function waitFor(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

