/**
 * Modern tier: libnbd 1.22 (Debian trixie: nbdinfo, nbdcopy, nbdsh) and nbd-client 3.26
 * against cownbd, over 127.0.0.1 TCP and a Unix socket (docs/modern-clients.md). These
 * clients ask for NBD_OPT_EXTENDED_HEADERS by default; what cownbd answers is stated by
 * EXTENDED_HEADERS_EXPECTED (test/helpers/modern.ts) — titles marked [ext] depend on it.
 * The Debian 12 generation of the same clients is tested in test/interop/.
 */
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { describeResult, serverLog, type MapEntry } from '../helpers/clients.js';
import { createRawImage, makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { EXPECTED_PACKETS, EXTENDED_HEADERS_EXPECTED, modern, modernNbdinfoJson, modernOk, requireModernTool } from '../helpers/modern.js';
import { startServer, type RunningServer } from '../helpers/server.js';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;
/** Two data islands in a sparse image; holes elsewhere, including the tail. */
const DATA: Array<[number, number]> = [
  [4 * MiB, 2 * MiB],
  [40 * MiB, 1 * MiB],
];
const hasLibnbd = requireModernTool('nbdinfo', 'nbdcopy', 'nbdsh');
const hasNbdClient = requireModernTool('nbd-client');

/** nbdinfo --map entries merged into runs of one type (servers may split extents anywhere). */
function runs(entries: MapEntry[]): Array<[offset: number, length: number, type: number]> {
  const out: Array<[number, number, number]> = [];
  for (const e of entries) {
    const last = out.at(-1);
    if (last && last[2] === e.type && last[0] + last[1] === e.offset) last[1] += e.length;
    else out.push([e.offset, e.length, e.type]);
  }
  return out;
}

/** The expected base:allocation runs of the DATA layout (3 = hole|zero, 0 = data). */
const ALLOCATION: Array<[number, number, number]> = [
  [0, 4 * MiB, 3],
  [4 * MiB, 2 * MiB, 0],
  [6 * MiB, 34 * MiB, 3],
  [40 * MiB, 1 * MiB, 0],
  [41 * MiB, 23 * MiB, 3],
];

describe.runIf(hasLibnbd || hasNbdClient)('today\'s libnbd and nbd-client against cownbd', () => {
  let tmp: TempDir;
  let tcp: RunningServer;
  let unix: RunningServer;
  const both = () => [
    ['TCP', tcp],
    ['Unix socket', unix],
  ] as const;

  beforeAll(async () => {
    tmp = makeTempDir();
    createRawImage(tmp.file('disk0.raw'), SIZE, DATA, 11);
    createRawImage(tmp.file('scratch.raw'), 8 * MiB);
    const args = [
      '--export', `disk0=${tmp.file('disk0.raw')},description=Modern disk 0`,
      '--export', `scratch=${tmp.file('scratch.raw')}`,
      '--log-level', 'debug',
    ];
    [tcp, unix] = await Promise.all([startServer(args), startServer(args, { unix: true })]);
  });
  afterAll(async () => {
    await Promise.all([tcp?.stop(), unix?.stop()]);
    tmp?.cleanup();
  });

  it.runIf(hasLibnbd)('[ext] nbdinfo names the packet style it negotiated, over TCP and a Unix socket', async () => {
    for (const [how, srv] of both()) {
      const r = await modernOk('nbdinfo', [srv.uri('disk0')]);
      expect(r.stdout.split('\n')[0], how).toBe(`protocol: newstyle-fixed without TLS, using ${EXPECTED_PACKETS} packets`);
      expect(r.stdout, how).toMatch(/export-size: 67108864 \(64M\)/);
      // The client asked whatever the answer: libnbd >= 1.18 requests extended headers by default.
      expect(serverLog(srv).some((l) => l.msg === 'option' && l.option === 'EXTENDED_HEADERS'), how).toBe(true);
    }
  });

  it.runIf(hasLibnbd)('[ext] nbdinfo --json: size, description, contexts, flags, block sizes and "extended"', async () => {
    const doc = await modernNbdinfoJson(tcp.uri('disk0'));
    expect(doc.protocol).toBe('newstyle-fixed');
    expect(doc.TLS).toBe(false);
    expect(doc.structured).toBe(true);
    expect(doc.extended).toBe(EXTENDED_HEADERS_EXPECTED);
    const e = doc.exports[0]!;
    expect(e['export-name']).toBe('disk0');
    expect(e.description).toBe('Modern disk 0');
    expect(e['export-size']).toBe(SIZE);
    expect(e.contexts).toEqual(expect.arrayContaining(['base:allocation', 'qemu:allocation-depth']));
    expect({
      is_read_only: e.is_read_only,
      can_flush: e.can_flush,
      can_fua: e.can_fua,
      can_trim: e.can_trim,
      can_zero: e.can_zero,
      can_multi_conn: e.can_multi_conn,
    }).toEqual({
      is_read_only: false,
      can_flush: true,
      can_fua: true,
      can_trim: true,
      can_zero: true,
      can_multi_conn: true,
    });
    // NBD_FLAG_BLOCK_STATUS_PAYLOAD is not asserted here: nbdinfo selects no meta context on this
    // connection, and a server may leave the flag off then (qemu-nbd 10 sets it, cownbd does not);
    // the nbdsh test below checks it on a connection with contexts.
    expect(e.block_size_minimum).toBe(1);
    expect(e.block_size_preferred).toBe(4096);
    expect(e.block_size_maximum).toBeGreaterThanOrEqual(MiB);
  });

  it.runIf(hasLibnbd)('nbdinfo --list names every export with its description, over TCP and a Unix socket', async () => {
    for (const [how, srv] of both()) {
      const doc = await modernNbdinfoJson(srv.uri(), ['--list']);
      const seen = doc.exports.map((e) => [e['export-name'], e.description ?? null]).sort();
      expect(seen, how).toEqual([['disk0', 'Modern disk 0'], ['scratch', null]]);
    }
  });

  it.runIf(hasLibnbd)('[ext] nbdinfo --can: exit 0 for what the server offers, 2 for what it does not', async () => {
    const can = async (what: string, flag = '--can') => (await modern('nbdinfo', [flag, what, tcp.uri('disk0')])).code;
    expect(await can('structured-reply')).toBe(0);
    expect(await can('extended-headers')).toBe(EXTENDED_HEADERS_EXPECTED ? 0 : 2);
    for (const f of ['flush', 'fua', 'trim', 'zero', 'fast-zero', 'multi-conn', 'cache', 'df']) expect(await can(f), f).toBe(0);
    expect(await can('read-only', '--is')).toBe(2);
  });

  it.runIf(hasLibnbd)('nbdinfo --map (base:allocation and qemu:allocation-depth) matches the sparse layout', async () => {
    for (const [how, srv] of both()) {
      const alloc = await modernOk('nbdinfo', ['--map', '--json', srv.uri('disk0')]);
      expect(runs(JSON.parse(alloc.stdout) as MapEntry[]), how).toEqual(ALLOCATION);
    }
    const depth = await modernOk('nbdinfo', ['--map=qemu:allocation-depth', '--json', tcp.uri('disk0')]);
    const entries = JSON.parse(depth.stdout) as MapEntry[];
    // A plain image is one layer: every byte is "local" (depth 1).
    expect(runs(entries)).toEqual([[0, SIZE, 1]]);
    const totals = await modernOk('nbdinfo', ['--map', '--totals', tcp.uri('disk0')]);
    expect(totals.stdout).toMatch(/^\s*3145728\s+4\.7%\s+0\s+data$/m);
  });

  it.runIf(hasLibnbd)('nbdcopy cownbd → file reproduces the image, over TCP and a Unix socket', async () => {
    for (const [how, srv] of both()) {
      const out = tmp.file(`copy-${srv === tcp ? 'tcp' : 'unix'}.raw`);
      await modernOk('nbdcopy', [srv.uri('disk0'), out]);
      expect(sha256File(out), how).toBe(sha256File(tmp.file('disk0.raw')));
    }
  });

  it.runIf(hasLibnbd)('nbdcopy file → cownbd writes every byte into the served image', async () => {
    const src = tmp.file('src.bin');
    // Data, a zero run nbdcopy will send as WRITE_ZEROES/TRIM, then data again.
    writeFileSync(src, Buffer.concat([randomBytes(3 * MiB), Buffer.alloc(2 * MiB), randomBytes(3 * MiB)]));
    writeFileSync(tmp.file('scratch.raw'), randomBytes(8 * MiB)); // old content must be overwritten, zeros too
    for (const [how, srv] of both()) {
      await modernOk('nbdcopy', ['--flush', src, srv.uri('scratch')]);
      expect(readFileSync(tmp.file('scratch.raw')).equals(readFileSync(src)), how).toBe(true);
      writeFileSync(tmp.file('scratch.raw'), randomBytes(8 * MiB));
    }
  });

  it.runIf(hasLibnbd)('[ext] nbdsh: set_request_extended_headers(True), 64-bit block status, filtered block status', async () => {
    const script = [
      'import json',
      'h.set_request_extended_headers(True)',
      'h.add_meta_context("base:allocation")',
      'h.add_meta_context("qemu:allocation-depth")',
      `h.connect_uri(${JSON.stringify(unix.uri('disk0'))})`,
      'seen = {}',
      'def cb(ctx, off, entries, err):',
      '    seen.setdefault(ctx, []).extend([list(e) for e in entries])',
      'size = h.get_size()',
      'h.block_status_64(size, 0, cb)',
      'full = seen; seen = {}',
      'filtered = None',
      'if h.can_block_status_payload():',
      '    h.block_status_filter(size, 0, ["qemu:allocation-depth"], cb)',
      '    filtered = seen',
      'print(json.dumps({"ext": h.get_extended_headers_negotiated(), "sr": h.get_structured_replies_negotiated(),',
      '    "payload": h.can_block_status_payload(), "full": full, "filtered": filtered}))',
    ].join('\n');
    const r = await modernOk('nbdsh', ['-c', script]);
    const doc = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as {
      ext: boolean;
      sr: boolean;
      payload: boolean;
      full: Record<string, Array<[number, number]>>;
      filtered: Record<string, Array<[number, number]>> | null;
    };
    expect(doc.ext, describeResult(r)).toBe(EXTENDED_HEADERS_EXPECTED);
    // Extended headers replace structured replies; libnbd reports structured replies as negotiated either way.
    expect(doc.sr).toBe(true);
    expect(doc.payload).toBe(EXTENDED_HEADERS_EXPECTED);
    // The entries (length, flags) of one request, turned into absolute runs for comparison.
    const toRuns = (list: Array<[number, number]>) => {
      let off = 0;
      return runs(list.map(([length, type]) => ({ offset: (off += length) - length, length, type, description: '' })));
    };
    expect(Object.keys(doc.full).sort()).toEqual(['base:allocation', 'qemu:allocation-depth']);
    // One request may stop early (the server caps a reply); the runs it did return must be a prefix.
    const alloc = toRuns(doc.full['base:allocation']!);
    expect(alloc.length).toBeGreaterThan(0);
    expect(alloc.slice(0, -1)).toEqual(ALLOCATION.slice(0, alloc.length - 1));
    if (EXTENDED_HEADERS_EXPECTED) {
      expect(Object.keys(doc.filtered ?? {})).toEqual(['qemu:allocation-depth']);
      expect(toRuns(doc.filtered!['qemu:allocation-depth']!)[0]![2]).toBe(1);
    } else {
      expect(doc.filtered).toBeNull();
    }
  });

  it.runIf(hasNbdClient)('nbd-client -l (3.26) lists the exports with descriptions, over TCP and a Unix socket', async () => {
    const tcpList = await modern('nbd-client', ['-l', '127.0.0.1', String(tcp.port)], { timeoutMs: 15_000 });
    const unixList = await modern('nbd-client', ['-l', '-u', unix.socketPath!], { timeoutMs: 15_000 });
    for (const r of [tcpList, unixList]) {
      expect(r.code, describeResult(r)).toBe(0);
      const lines = r.stdout.split('\n').filter((l) => l && !l.startsWith('Negotiation'));
      expect(lines.sort(), describeResult(r)).toEqual(['disk0: Modern disk 0', 'scratch']);
    }
  });
});

/**
 * 64-bit lengths, the reason extended headers exist: on an 8 GiB sparse export with one byte
 * of data at 6 GiB, libnbd gets the leading 6 GiB hole as ONE extent (a compact reply cannot
 * say more than 4 GiB - 1), and sends single 5 GiB TRIM and WRITE_ZEROES requests.
 */
describe.runIf(hasLibnbd)('[ext] 64-bit lengths from libnbd 1.22', () => {
  const GiB = 1024 ** 3;
  let tmp: TempDir;
  let srv: RunningServer;

  beforeAll(async () => {
    tmp = makeTempDir();
    createRawImage(tmp.file('big.raw'), 8 * GiB);
    const fd = openSync(tmp.file('big.raw'), 'r+');
    writeSync(fd, Buffer.from('x'), 0, 1, 6 * GiB);
    closeSync(fd);
    srv = await startServer([tmp.file('big.raw'), '-n', 'big', '--log-level', 'trace'], { unix: true });
  });
  afterAll(async () => {
    await srv?.stop();
    tmp?.cleanup();
  });

  it('[ext] block status reports a 6 GiB hole in one extent; 5 GiB TRIM and WRITE_ZEROES are single requests', async () => {
    const script = [
      'import json',
      'h.add_meta_context("base:allocation")',
      `h.connect_uri(${JSON.stringify(srv.uri('big'))})`,
      'ext = h.get_extended_headers_negotiated()',
      'seen = []',
      'h.block_status_64(h.get_size(), 0, lambda ctx, off, entries, err: seen.extend([list(e) for e in entries]))',
      'done = []',
      'if ext:',
      `    h.trim(5 * ${GiB}, 0)`,
      '    done.append("trim")',
      `    h.zero(5 * ${GiB}, ${GiB})`,
      '    done.append("zero")',
      `tail = h.pread(2, 6 * ${GiB} - 1).hex()`,
      'print(json.dumps({"ext": ext, "extents": seen, "done": done, "tail": tail}))',
    ].join('\n');
    const r = await modernOk('nbdsh', ['-c', script]);
    const doc = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { ext: boolean; extents: Array<[number, number]>; done: string[]; tail: string };
    expect(doc.ext).toBe(EXTENDED_HEADERS_EXPECTED);
    if (EXTENDED_HEADERS_EXPECTED) {
      expect(doc.extents[0]).toEqual([6 * GiB, 3]);
      expect(doc.done).toEqual(['trim', 'zero']);
      // One request each on the wire (the trace log names every request the server read).
      const big = serverLog(srv).filter((l) => l.msg === 'request' && (l.cmd === 'TRIM' || l.cmd === 'WRITE_ZEROES'));
      expect(big.map((l) => [l.cmd, Number(l.offset), Number(l.length)])).toEqual([
        ['TRIM', 0, 5 * GiB],
        ['WRITE_ZEROES', GiB, 5 * GiB],
      ]);
    } else {
      expect(doc.extents.every(([len]) => len < 4 * GiB)).toBe(true);
    }
    // The byte at 6 GiB survived the zeroing that ended just before it.
    expect(doc.tail).toBe('0078');
    expect(statSync(tmp.file('big.raw')).size).toBe(8 * GiB);
  });
});
