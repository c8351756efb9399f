/**
 * The pure parts of the security code: psktool files, --allow-from lists, rate-limited
 * warnings, admission counting and the access rules. Servers and real clients are in
 * test/interop/tls.test.ts and test/server/limits.test.ts.
 */
import { pino } from 'pino';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parsePskFile } from '../../src/server/tls.js';
import { Admission, RateLimitedWarning, parseAllowFrom } from '../../src/server/limits.js';
import { permits, type AccessRules } from '../../src/server/access-control.js';
import type { StaticExportConfig } from '../../src/server/exports.js';
import type { Logger } from '../../src/logging.js';

function capture(): { log: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const sink = new Writable({
    write(chunk, _enc, done) {
      lines.push(JSON.parse(String(chunk)) as Record<string, unknown>);
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink) as unknown as Logger, lines };
}

describe('parsePskFile', () => {
  const key = 'a5a9d2ac19b0cb0f4e9ceade31a0d9ce7e05ba2df7ce8e94e585e8e741464ed3';
  it('reads psktool lines, skipping blanks and comments', () => {
    const keys = parsePskFile(`# machines\nvm1:${key}\n\nvm2:${key.toUpperCase()}\n`, 'k.psk');
    expect([...keys.keys()]).toEqual(['vm1', 'vm2']);
    expect(keys.get('vm1')!.toString('hex')).toBe(key);
  });
  it.each([
    ['no colon', 'vm1', /k\.psk line 1: expected username:hexkey/],
    ['odd hex', `vm1:${key}0`, /line 1: the key of "vm1" is not an even number of hex digits/],
    ['short key', 'vm1:00112233', /line 1: the key of "vm1" is shorter than 128 bits/],
    ['duplicate', `vm1:${key}\nvm1:${key}`, /line 2: username "vm1" appears twice/],
    ['empty', '# nothing\n', /k\.psk: no username:hexkey lines/],
  ])('refuses %s, naming the file and line', (_what, text, message) => {
    expect(() => parsePskFile(text, 'k.psk')).toThrow(message);
  });
});

describe('parseAllowFrom', () => {
  it('matches CIDRs and single addresses, IPv4-mapped IPv6 included', () => {
    const list = parseAllowFrom(['10.0.0.0/8', '192.168.1.7', 'fd00::/8'])!;
    expect(list.check('10.200.3.4', 'ipv4')).toBe(true);
    expect(list.check('192.168.1.7', 'ipv4')).toBe(true);
    expect(list.check('192.168.1.8', 'ipv4')).toBe(false);
    expect(list.check('fd12::1', 'ipv6')).toBe(true);
    expect(parseAllowFrom([])).toBeUndefined();
    const a = new Admission({ maxConnections: 10, maxConnectionsPerClient: 10, allowFrom: list }, capture().log);
    expect(a.admit('::ffff:10.1.2.3')).toBeUndefined();
    expect(a.admit('::ffff:11.1.2.3')).toBe('address not allowed');
  });
  it.each(['10.0.0.0/33', 'nonsense', '10.0.0.0/x', '::1/129'])('refuses %s', (entry) => {
    expect(() => parseAllowFrom([entry])).toThrow(`--allow-from "${entry}"`);
  });
});

describe('RateLimitedWarning', () => {
  it('logs once per interval and reports how many were suppressed', () => {
    const { log, lines } = capture();
    let now = 0;
    const w = new RateLimitedWarning(log, 'refused', 10_000, () => now);
    for (let i = 0; i < 50; i++) w.warn({ i });
    now = 10_000;
    w.warn({ i: 50 });
    expect(lines.map((l) => [l.i, l.suppressed])).toEqual([[0, 0], [50, 49]]);
  });
});

describe('Admission', () => {
  it('counts per address and in total, and releases', () => {
    const a = new Admission({ maxConnections: 3, maxConnectionsPerClient: 2 }, capture().log);
    expect(a.admit('10.0.0.1')).toBeUndefined();
    expect(a.admit('10.0.0.1')).toBeUndefined();
    expect(a.admit('10.0.0.1')).toBe('too many connections from this address');
    expect(a.admit(undefined)).toBeUndefined(); // Unix socket: no per-address cap
    expect(a.admit('10.0.0.2')).toBe('too many connections');
    a.release('10.0.0.1');
    expect(a.admit('10.0.0.2')).toBeUndefined();
  });
});

describe('access rules', () => {
  const configs: StaticExportConfig[] = [
    { name: 'open', path: 'o.raw' },
    { name: 'db', path: 'db.raw', allow: ['vm1', 'vm2'] },
  ];
  const exports = { names: () => configs.map((c) => c.name), config: (n: string) => configs.find((c) => c.name === n) };
  it('allow= lists restrict static exports; match-identity restricts the others', () => {
    const rules: AccessRules = { exports, matchIdentity: true };
    expect(permits(rules, 'open', undefined)).toBe(true);
    expect(permits(rules, 'db', 'vm2')).toBe(true);
    expect(permits(rules, 'db', 'vm3')).toBe(false);
    expect(permits(rules, 'db', undefined)).toBe(false);
    expect(permits(rules, 'vm3', 'vm3')).toBe(true);
    expect(permits(rules, 'vm3', 'vm1')).toBe(false);
    expect(permits(rules, 'vm3', undefined)).toBe(false);
    expect(permits({ exports, matchIdentity: false }, 'vm3', 'vm1')).toBe(true);
  });
});
