/**
 * Write ordering under strace (issue 15): the property that survives power loss, which
 * kill -9 cannot show. The server runs under
 *   strace -f -y -xx -s 8192 -e trace=pwrite64,pwritev,pwritev2,fdatasync,fsync
 * while two connections write fresh ranges of a cow overlay, then of an add-cow overlay
 * (FUA, FLUSH, unaligned). From the trace: every bit that a bitmap write newly sets must
 * belong to a unit (cow: 512-byte sector; add-cow: cluster) whose every data write (the
 * guest's and COW-fills) completed before an fdatasync/fsync of the DATA file that started
 * after it and finished before the bitmap write started. (cow: data and bitmap share one
 * file; add-cow: data in the image file, bitmap in the .add-cow file.)
 */
import { execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import { inspectAddCow } from '../../src/formats/add-cow/index.js';
import { inspectCowFile } from '../../src/formats/cow/index.js';
import { createPatternedImage, makeTempDir } from '../helpers/images.js';
import { CLI_PATH } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { CAMPAIGN, report, rng } from './knobs.js';
import { AsyncNbdClient } from './nbd-async-client.js';

const MiB = 1024 * 1024;
const SECTOR = 512;
const hasStrace = requireTool('strace');
const WRITES = Number(process.env.COWNBD_ORDER_WRITES ?? 600);

interface Event {
  call: string;
  fd: string;
  start: number;
  end: number;
  offset: number;
  length: number;
  data?: Buffer;
}

/** Parse strace -f -y -xx output into completed events with start/end positions. */
export function parseTrace(text: string): Event[] {
  const events: Event[] = [];
  const open = new Map<string, { call: string; head: string; start: number }>();
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const [, pid, rest] = m as unknown as [string, string, string];
    let full: string;
    let start = i;
    const unfinished = /^(\w+)\((.*) <unfinished \.\.\.>$/.exec(rest);
    if (unfinished) {
      open.set(pid, { call: unfinished[1]!, head: `${unfinished[1]}(${unfinished[2]}`, start: i });
      continue;
    }
    const resumed = /^<\.\.\. (\w+) resumed>(.*)$/.exec(rest);
    if (resumed) {
      const o = open.get(pid);
      open.delete(pid);
      if (!o) continue;
      full = o.head + resumed[2];
      start = o.start;
    } else full = rest;
    const call = /^(\w+)\(/.exec(full)?.[1];
    if (!call) continue;
    // -xx prints the fd's path hex-escaped too.
    const fd = decode(`"${/^\w+\(\d+<([^>]*)>/.exec(full)?.[1] ?? ''}"`).toString();
    const ret = Number(/\)\s+=\s+(-?\d+)/.exec(full)?.[1] ?? -1);
    if (ret < 0) continue;
    const ev: Event = { call, fd, start, end: i, offset: 0, length: ret };
    if (call === 'pwrite64') {
      const a = /, ("(?:[^"\\]|\\.)*")(\.\.\.)?, (\d+), (\d+)\)\s+=/.exec(full);
      if (!a) continue;
      ev.offset = Number(a[4]);
      if (!a[2]) ev.data = decode(a[1]!);
    } else if (call === 'pwritev' || call === 'pwritev2') {
      const a = /\], \d+, (\d+)(?:, \w+)?\)\s+=/.exec(full);
      if (!a) continue;
      ev.offset = Number(a[1]);
      const parts = [...full.matchAll(/iov_base=("(?:[^"\\]|\\.)*")(\.\.\.)?/g)];
      if (parts.every((p) => !p[2])) ev.data = Buffer.concat(parts.map((p) => decode(p[1]!)));
    }
    events.push(ev);
  }
  return events;
}

function decode(quoted: string): Buffer {
  return Buffer.from(quoted.slice(1, -1).replace(/\\x/g, ''), 'hex');
}

interface Layout {
  readonly dataFile: string;
  /** File offset of virtual byte 0 in dataFile. */
  readonly dataOffset: number;
  readonly unit: number;
  readonly bitmapFile: string;
  readonly bitmapOffset: number;
  readonly bitmapLength: number;
}

/**
 * Run the traced server on `image`, write fresh ranges from two connections, return the trace.
 * `flushes: false`: no FUA and no FLUSH, so only the periodic bitmap sync (serveArgs sets its
 * interval) and the close at the end write bitmap pages.
 */
async function tracedWorkload(image: string, traceFile: string, size: number, opts: { serveArgs?: string[]; flushes?: boolean } = {}): Promise<number> {
  const flushes = opts.flushes ?? true;
  const proc = spawn('strace', ['-f', '-y', '-xx', '-s', '8192', '-qq', '-o', traceFile, '-e', 'trace=pwrite64,pwritev,pwritev2,fdatasync,fsync', process.execPath, CLI_PATH, 'serve', image, '-n', 'disk', '-p', '0', ...(opts.serveArgs ?? [])], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  proc.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no listen line: ${out}`)), 30_000);
    proc.stdout.on('data', () => {
      const m = /listening on nbd:\/\/127\.0\.0\.1:(\d+)\//.exec(out);
      if (m) {
        clearTimeout(t);
        resolve(Number(m[1]));
      }
    });
  });
  // Fresh 4 KiB slots, each written once (so every data write sets new bits).
  const r = rng(CAMPAIGN.seed);
  const slots = Array.from({ length: size / 4096 }, (_, i) => i);
  for (let i = slots.length - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [slots[i], slots[j]] = [slots[j]!, slots[i]!];
  }
  const clients = await Promise.all([AsyncNbdClient.connect(port, 'disk'), AsyncNbdClient.connect(port, 'disk')]);
  let requests = 0;
  await Promise.all(
    clients.map(async (c, ci) => {
      const pending: Array<Promise<unknown>> = [];
      for (let k = ci; k < WRITES; k += 2) {
        const slot = slots[k]!;
        const offset = slot * 4096 + Math.floor(r() * 3000);
        const length = 1 + Math.floor(r() * (4096 - (offset - slot * 4096)));
        pending.push(c.write(offset, Buffer.alloc(length, k & 0xff), r() < 0.2 && flushes));
        requests++;
        if (r() < 0.05 && flushes) pending.push(c.flush());
        if (pending.length >= 8) await Promise.all(pending.splice(0));
      }
      await Promise.all(pending);
      if (flushes) await c.flush();
    }),
  );
  for (const c of clients) c.close();
  // Stop the traced server itself (strace then exits and flushes the trace).
  const child = readFileSync(`/proc/${proc.pid}/task/${proc.pid}/children`, 'utf8').trim().split(/\s+/)[0];
  process.kill(Number(child), 'SIGTERM');
  await new Promise((resolve) => proc.once('exit', resolve));
  return requests;
}

/** The ordering check over a parsed trace; returns counts and the first violations. */
function checkOrdering(all: Event[], g: Layout): { bitmapWrites: number; bits: number; syncs: number; violations: string[] } {
  const events = all.filter((e) => e.fd === g.dataFile || e.fd === g.bitmapFile);
  const shadow = Buffer.alloc(g.bitmapLength);
  const dataDone = new Map<number, number>(); // unit → end position of its latest data write
  const syncs: Array<{ start: number; end: number }> = [];
  let bitmapWrites = 0;
  let bits = 0;
  const violations: string[] = [];
  // Completion order; a bitmap write is judged against what finished before it started.
  for (const e of [...events].sort((a, b) => a.end - b.end)) {
    if (e.call === 'fdatasync' || e.call === 'fsync') {
      if (e.fd === g.dataFile) syncs.push({ start: e.start, end: e.end });
      continue;
    }
    if (e.fd === g.dataFile && e.offset >= g.dataOffset) {
      const v = e.offset - g.dataOffset;
      for (let u = Math.floor(v / g.unit); u * g.unit < v + e.length; u++) dataDone.set(u, Math.max(dataDone.get(u) ?? -1, e.end));
      continue;
    }
    if (e.fd !== g.bitmapFile || e.offset < g.bitmapOffset || e.offset >= g.bitmapOffset + g.bitmapLength) continue;
    expect(e.data, `bitmap write at ${e.offset} was not fully traced`).toBeDefined();
    bitmapWrites++;
    const at = e.offset - g.bitmapOffset;
    for (let i = 0; i < e.data!.length && at + i < shadow.length; i++) {
      const newly = e.data![i]! & ~shadow[at + i]!;
      for (let bit = 0; bit < 8; bit++) {
        if (!(newly & (1 << bit))) continue;
        const unit = (at + i) * 8 + bit;
        bits++;
        const written = dataDone.get(unit);
        const covered = written !== undefined && written < e.start && syncs.some((s) => s.start > written && s.end < e.start);
        if (!covered && violations.length < 5) violations.push(`bit of unit ${unit} written at trace line ${e.start}: data ${written === undefined ? 'never written' : `done at line ${written}`}, no covering fdatasync between`);
      }
      shadow[at + i] = e.data![i]!;
    }
  }
  return { bitmapWrites, bits, syncs: syncs.length, violations };
}

describe.runIf(hasStrace)('write ordering under strace', () => {
  const tmp = makeTempDir('cownbd-order-');
  afterAll(() => tmp.cleanup());
  const SIZE = 8 * MiB;

  it('the checker flags a bitmap bit written without a covering fdatasync (self-test)', () => {
    const hex = (t: string) => [...Buffer.from(t)].map((b) => `\\x${b.toString(16).padStart(2, '0')}`).join('');
    const fd = `3<${hex('/f')}>`;
    const data = `1 pwrite64(${fd}, "\\x00"..., 512, 4096) = 512`;
    const bitmap = `1 pwrite64(${fd}, "\\x01", 1, 0) = 1`;
    const sync = `2 fdatasync(${fd}) = 0`;
    const layout: Layout = { dataFile: '/f', dataOffset: 4096, unit: 512, bitmapFile: '/f', bitmapOffset: 0, bitmapLength: 1 };
    expect(checkOrdering(parseTrace([data, sync, bitmap].join('\n')), layout).violations).toEqual([]);
    expect(checkOrdering(parseTrace([data, bitmap, sync].join('\n')), layout).violations).toHaveLength(1);
    expect(checkOrdering(parseTrace([sync, data, bitmap].join('\n')), layout).violations).toHaveLength(1);
  });

  it('cow: every bitmap bit reaches the file after an fdatasync that covered its data', async () => {
    const base = createPatternedImage(tmp.file('base.raw'), SIZE, 2);
    const cow = tmp.file('disk.cow');
    execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'cow', cow, '--backing', base]);
    const geo = (await inspectCowFile(cow)).geometry;
    const requests = await tracedWorkload(cow, tmp.file('cow.trace'), SIZE);
    const layout: Layout = { dataFile: cow, dataOffset: geo.dataOffset, unit: SECTOR, bitmapFile: cow, bitmapOffset: geo.bitmapOffset, bitmapLength: geo.bitmapLength };
    const r = checkOrdering(parseTrace(readFileSync(tmp.file('cow.trace'), 'utf8')), layout);
    report(`write-ordering cow: ${requests} writes on 2 connections, ${r.bitmapWrites} bitmap writes, ${r.bits} newly set bits checked, ${r.syncs} syncs, ${r.violations.length} violations`);
    expect(r.violations).toEqual([]);
    expect(r.bits).toBeGreaterThan(1000);
  }, 120_000);

  it('add-cow: every bitmap bit reaches the .add-cow file after an image-file fdatasync that covered its cluster', async () => {
    const base = createPatternedImage(tmp.file('base2.raw'), SIZE, 3);
    const ac = tmp.file('disk.add-cow');
    execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'add-cow', ac, '--image', 'disk.img', '--backing', base, '--cluster-size', '4K']);
    const insp = await inspectAddCow(ac);
    const requests = await tracedWorkload(ac, tmp.file('ac.trace'), SIZE);
    const layout: Layout = { dataFile: insp.imagePath, dataOffset: 0, unit: insp.clusterSize, bitmapFile: ac, bitmapOffset: insp.header.headerSize, bitmapLength: insp.bitmap.length };
    const r = checkOrdering(parseTrace(readFileSync(tmp.file('ac.trace'), 'utf8')), layout);
    report(`write-ordering add-cow: ${requests} writes on 2 connections, ${r.bitmapWrites} bitmap writes, ${r.bits} newly set bits checked, ${r.syncs} image syncs, ${r.violations.length} violations`);
    expect(r.violations).toEqual([]);
    expect(r.bits).toBeGreaterThan(200);
  }, 120_000);

  it('periodic bitmap syncs (no FLUSH, no FUA; --bitmap-sync-interval 0.05) keep data before bitmap, cow and add-cow', async () => {
    const base = createPatternedImage(tmp.file('base3.raw'), SIZE, 4);
    const cow = tmp.file('periodic.cow');
    const ac = tmp.file('periodic.add-cow');
    execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'cow', cow, '--backing', base]);
    execFileSync(process.execPath, [CLI_PATH, 'create', '-f', 'add-cow', ac, '--image', 'periodic.img', '--backing', base, '--cluster-size', '4K']);
    const geo = (await inspectCowFile(cow)).geometry;
    const insp = await inspectAddCow(ac);
    const layouts: Array<[string, Layout]> = [
      [cow, { dataFile: cow, dataOffset: geo.dataOffset, unit: SECTOR, bitmapFile: cow, bitmapOffset: geo.bitmapOffset, bitmapLength: geo.bitmapLength }],
      [ac, { dataFile: insp.imagePath, dataOffset: 0, unit: insp.clusterSize, bitmapFile: ac, bitmapOffset: insp.header.headerSize, bitmapLength: insp.bitmap.length }],
    ];
    for (const [image, layout] of layouts) {
      const trace = `${image}.trace`;
      const requests = await tracedWorkload(image, trace, SIZE, { serveArgs: ['--bitmap-sync-interval', '0.05'], flushes: false });
      const r = checkOrdering(parseTrace(readFileSync(trace, 'utf8')), layout);
      report(`write-ordering periodic ${layout.unit === SECTOR ? 'cow' : 'add-cow'}: ${requests} writes without FLUSH/FUA, ${r.bitmapWrites} bitmap writes, ${r.bits} newly set bits checked, ${r.syncs} data syncs, ${r.violations.length} violations`);
      expect(r.violations).toEqual([]);
      expect(r.bits).toBeGreaterThan(200);
      // Without FLUSH/FUA only the timer and the final close sync: more than one means the timer ran.
      expect(r.syncs).toBeGreaterThan(1);
    }
  }, 180_000);
});
