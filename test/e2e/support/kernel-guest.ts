/**
 * Boot the kernel-client guest kit (scripts/e2e/kernel-kit.sh) under QEMU/TCG and carry its
 * NBD connections to a server on the host, with no IP networking in the guest:
 *
 *   nbd-client ─unix─ vport-bridge ─/dev/vportNpM─ QEMU virtserialport ─chardev socket─
 *     relay (this module) ─unix/tcp─ cownbd
 *
 * Why a relay instead of pointing QEMU's chardev straight at cownbd: a chardev socket
 * connects once, when QEMU starts, and would then idle in the handshake until cownbd's
 * handshake timeout closes it. Here QEMU listens on one socket per port, and the relay
 * opens the QEMU side and a fresh server connection only when the guest opens the port
 * (QMP VSERPORT_CHANGE open=true) and closes both when the guest closes it, so each guest
 * open is exactly one NBD connection, the way a TCP connect would be. The relay also taps
 * the client→server bytes (NbdWireTap) so tests can assert what the kernel sent.
 *
 * The per-boot steps travel as a second cpio archive appended to the kit's initrd.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { mustRun, run } from './harness.js';
import { NbdWireTap, type WireSummary } from './nbd-wire-tap.js';

export interface KitAssets {
  vmlinuz: string;
  kitInitrd: string;
}

export interface GuestOptions {
  assets: KitAssets;
  /** Scratch dir for sockets, the console log and the per-boot initrd. */
  dir: string;
  /** virtio-serial port names (the guest sees /dev/virtio-ports/NAME). */
  ports: string[];
  /** Where a port's connections go (a cownbd Unix socket or TCP port). */
  target: (port: string) => net.NetConnectOpts;
  /** Run between the E2E markers, `sh -e`, with /lib/kit.sh sourced... */
  steps?: string;
  /** ...or sourced by PID 1 (root on NBD: attach and switch_root). */
  bootScript?: string;
  /**
   * Host actions the guest asks for with `host CMD` (kit.sh) over the port named "ctl"
   * (add it to `ports`); the guest waits until the promise settles.
   */
  onControl?: (cmd: string) => Promise<void>;
  /** More files for the guest's /e2e/ (e.g. TLS credentials). */
  files?: Record<string, string | Buffer>;
  /** Extra kernel command line words (e.g. e2e_script= for the golden image's init). */
  append?: string[];
  /** nbd module parameters, comma separated (e.g. nbds_max=4). */
  nbdParams?: string;
  smp?: number;
  timeoutS?: number;
}

export interface ConnectionRecord {
  port: string;
  /** Milliseconds since the boot started. */
  openedAt: number;
  closedAt?: number;
  /** The server's first bytes (hex), for failure messages. */
  firstReply?: string;
  wire: WireSummary;
}

export interface GuestResult {
  /** Guest status from "E2E-END rc=N"; 124 timeout, 125 no marker. */
  code: number;
  /** Console lines between E2E-BEGIN and E2E-END. */
  output: string[];
  console: string;
  ms: number;
  connections: ConnectionRecord[];
}

/** Build or reuse the kit (cached in $E2E_CACHE like the boot test's kernel). */
export async function prepareKit(e2eScripts: string): Promise<KitAssets> {
  const vars: Record<string, string> = {};
  for (const script of ['kernel.sh', 'kernel-kit.sh']) {
    const r = await mustRun('bash', [path.join(e2eScripts, script)], { timeoutMs: 300_000 });
    for (const m of r.stdout.matchAll(/^([A-Z_]+)=(.*)$/gm)) vars[m[1]!] = m[2]!;
  }
  return { vmlinuz: vars.VMLINUZ!, kitInitrd: vars.KIT_INITRD! };
}

/** A newc cpio archive (uncompressed entries) holding /e2e/NAME files, gzipped. */
function stepsArchive(files: Record<string, string | Buffer>): Buffer {
  const parts: Buffer[] = [];
  let ino = 1;
  const entry = (name: string, mode: number, data: Buffer): void => {
    const nameBuf = Buffer.from(`${name}\0`);
    const hex = (n: number): string => n.toString(16).padStart(8, '0');
    const fields = [ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBuf.length, 0];
    const header = Buffer.from(`070701${fields.map(hex).join('')}`);
    const pad = (len: number): Buffer => Buffer.alloc((4 - (len % 4)) % 4);
    parts.push(header, nameBuf, pad(header.length + nameBuf.length), data, pad(data.length));
  };
  entry('e2e', 0o040755, Buffer.alloc(0));
  for (const [name, data] of Object.entries(files)) entry(`e2e/${name}`, 0o100755, Buffer.from(data));
  entry('TRAILER!!!', 0, Buffer.alloc(0));
  return gzipSync(Buffer.concat(parts));
}

function guestOutput(consoleText: string): string[] {
  const lines = consoleText.split('\n');
  const begin = lines.findIndex((l) => l.includes('E2E-BEGIN'));
  const end = lines.findIndex((l, i) => i > begin && l.includes('E2E-END rc='));
  if (begin < 0 || end < begin) return [];
  return lines.slice(begin + 1, end);
}

async function waitForFile(file: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!existsSync(file)) {
    if (Date.now() > deadline) throw new Error(`${file} did not appear within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function bootKitGuest(opts: GuestOptions): Promise<GuestResult> {
  const started = Date.now();
  const id = `g${started.toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const work = path.join(opts.dir, id);
  await mkdir(work);
  const consoleLog = path.join(work, 'console.log');
  const qmpSock = path.join(work, 'qmp.sock');
  const initrd = path.join(work, 'initrd');
  const files: Record<string, string | Buffer> = { ...opts.files };
  if (opts.steps !== undefined) files['steps.sh'] = opts.steps;
  if (opts.bootScript !== undefined) files['boot.sh'] = opts.bootScript;
  await writeFile(initrd, Buffer.concat([await readFile(opts.assets.kitInitrd), stepsArchive(files)]));

  const append = ['console=ttyS0', 'quiet', 'loglevel=3', 'panic=-1', 'nokaslr', '8250.nr_uarts=1', `kit_ports=${opts.ports.length}`];
  if (opts.nbdParams) append.push(`kit_nbd=${opts.nbdParams}`);
  append.push(...(opts.append ?? []));
  const args = [
    '-accel', process.env.E2E_ACCEL ?? 'tcg', '-m', '384', '-smp', String(opts.smp ?? 1),
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
    '-chardev', `file,id=con0,path=${consoleLog}`, '-serial', 'chardev:con0',
    '-kernel', opts.assets.vmlinuz, '-initrd', initrd, '-append', append.join(' '),
    // wait=on: QEMU starts the guest only once the relay listens for port events.
    '-qmp', `unix:${qmpSock},server=on,wait=on`,
    '-device', 'virtio-serial-pci,id=vs0',
  ];
  for (const [i, port] of opts.ports.entries()) {
    args.push('-chardev', `socket,id=c${i},path=${path.join(work, `${port}.sock`)},server=on,wait=off`);
    args.push('-device', `virtserialport,bus=vs0.0,chardev=c${i},id=${port},name=${port}`);
  }

  const connections: ConnectionRecord[] = [];
  interface Session {
    record: ConnectionRecord;
    guest: net.Socket;
    server: net.Socket;
    /** The guest closed the port: server bytes have no reader any more. */
    closing: boolean;
  }
  const live = new Map<string, Session>();
  /** Sessions whose guest side closed, still draining the guest's last bytes, by port. */
  const draining = new Map<string, Session>();
  const finish = (s: Session): void => {
    s.guest.destroy();
    s.server.end();
  };
  const closeSession = (port: string): void => {
    const s = live.get(port);
    if (!s) return;
    live.delete(port);
    s.closing = true;
    s.record.closedAt = Date.now() - started;
    // The guest's last bytes (a DISC) may still be on their way through QEMU's chardev:
    // let them drain to the server before ending it, as a TCP FIN would follow the data.
    // Nothing the server sends now may reach the port: the guest's next open of it is a
    // new connection and must start with a fresh greeting.
    draining.set(port, s);
    setTimeout(() => {
      if (draining.get(port) === s) draining.delete(port);
      finish(s);
    }, 200);
  };
  const openControl = (port: string): void => {
    const ctl = net.connect(path.join(work, `${port}.sock`));
    ctl.on('error', () => {});
    ctl.write('hello\n');
    let buf = '';
    let chain = Promise.resolve();
    ctl.setEncoding('utf8').on('data', (d: string) => {
      buf += d;
      let nl: number;
      while ((nl = buf.indexOf('\n')) >= 0) {
        const cmd = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        chain = chain
          .then(() => opts.onControl?.(cmd))
          .then(
            () => void ctl.write(`done ${cmd}\n`),
            (err: unknown) => void ctl.write(`failed ${cmd}: ${String(err)}\n`),
          );
      }
    });
    controls.set(port, ctl);
  };
  const controls = new Map<string, net.Socket>();
  const openSession = (port: string): void => {
    if (port === 'ctl') {
      controls.get(port)?.destroy();
      openControl(port);
      return;
    }
    closeSession(port);
    // QEMU's chardev serves one client at a time: the drain of the previous session on
    // this port must end now, or the new connection would wait behind it.
    const old = draining.get(port);
    if (old) {
      draining.delete(port);
      finish(old);
    }
    const tap = new NbdWireTap();
    const record: ConnectionRecord = { port, openedAt: Date.now() - started, wire: tap.summary };
    const guest = net.connect(path.join(work, `${port}.sock`));
    const server = net.connect(opts.target(port));
    const session: Session = { record, guest, server, closing: false };
    guest.on('data', (d: Buffer) => {
      tap.feed(d);
      server.write(d);
    });
    server.on('data', (d: Buffer) => {
      if (session.closing) return;
      if (record.firstReply === undefined) record.firstReply = d.subarray(0, 16).toString('hex');
      guest.write(d);
    });
    const onEnd = (): void => {
      if (live.get(port) === session) closeSession(port);
    };
    for (const s of [guest, server]) {
      s.on('error', onEnd);
      s.on('close', onEnd);
    }
    live.set(port, session);
    connections.push(record);
  };

  const qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'], detached: true });
  let qemuErr = '';
  qemu.stderr.setEncoding('utf8').on('data', (d: string) => (qemuErr += d));
  const exited = new Promise<number | null>((resolve) => qemu.once('exit', (code) => resolve(code)));
  const timeoutMs = (opts.timeoutS ?? 180) * 1000;
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      process.kill(-qemu.pid!, 'SIGKILL');
    } catch {
      qemu.kill('SIGKILL');
    }
  }, timeoutMs);

  let qmp: net.Socket | undefined;
  try {
    await Promise.race([waitForFile(qmpSock, 30_000), exited.then(() => { throw new Error(`QEMU exited: ${qemuErr}`); })]);
    qmp = net.connect(qmpSock);
    let pending = '';
    qmp.setEncoding('utf8').on('data', (d: string) => {
      pending += d;
      let nl: number;
      while ((nl = pending.indexOf('\n')) >= 0) {
        const line = pending.slice(0, nl).trim();
        pending = pending.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line) as { QMP?: unknown; event?: string; data?: { id: string; open: boolean } };
        if (msg.QMP) qmp!.write('{"execute":"qmp_capabilities"}\n');
        if (msg.event === 'VSERPORT_CHANGE' && msg.data) {
          if (msg.data.open) openSession(msg.data.id);
          else if (msg.data.id === 'ctl') controls.get('ctl')?.destroy();
          else closeSession(msg.data.id);
        }
      }
    });
    qmp.on('error', () => {});
    await exited;
  } finally {
    clearTimeout(timer);
    qmp?.destroy();
    for (const port of [...live.keys()]) closeSession(port);
    for (const c of controls.values()) c.destroy();
    await new Promise((r) => setTimeout(r, 300));
  }
  const consoleText = existsSync(consoleLog) ? (await readFile(consoleLog, 'utf8')).replace(/\r/g, '') : '';
  const m = [...consoleText.matchAll(/E2E-END rc=(\d+)/g)].pop();
  const code = timedOut ? 124 : m ? Number(m[1]) : 125;
  if (process.env.E2E_KEEP !== '1') await rm(work, { recursive: true, force: true });
  return {
    code,
    output: guestOutput(consoleText),
    console: `${consoleText}\n--- qemu stderr ---\n${qemuErr}\n--- relay ---\n${connections.map((c) => JSON.stringify(c)).join('\n')}`,
    ms: Date.now() - started,
    connections,
  };
}

/** Read a whole export through the server (nbdcopy), for host-side comparisons. */
export async function dumpExport(uri: string, dest: string): Promise<void> {
  const r = await run('nbdcopy', [uri, dest], { timeoutMs: 120_000 });
  if (r.code !== 0) throw new Error(`nbdcopy ${uri} exited ${r.code}: ${r.stderr}`);
}
