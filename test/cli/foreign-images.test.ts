/**
 * Never serve a foreign image as raw by accident (issue 20): every format `qemu-img create`
 * makes that cownbd does not write (qcow2, qcow, QED, VMDK sparse and descriptor, VHDX, VHD
 * dynamic and fixed, VDI, Parallels, LUKS) is made at test time by the real qemu-img and
 *   - recognised by the magic table (src/formats/foreign-magic.ts) and named by `info`
 *     as qemu-img names it, with the size qemu-img reports;
 *   - refused, with one line naming the path, the format and the option that says raw,
 *     by `serve IMAGE`, `--export`, `--base`, `--ephemeral`, `create --backing`,
 *     `convert -B`, `rebase -b`, `commit --to`, `publish` and the image tool (and, as an
 *     add-cow --image that would be written, with no override), and left byte-for-byte
 *     unchanged;
 *   - still served, every byte as it is in the file, when the operator says raw
 *     (`-f raw`, `format=raw`, `--base-format raw`), read back with python3-libnbd.
 * Partition tables are raw disks, and backings named inside headers stay unprobed.
 */
import { closeSync, existsSync, openSync, readSync, statSync, writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { detectForeign, FOREIGN_HEAD_BYTES, FOREIGN_TAIL_BYTES, FOREIGN_FORMATS } from '../../src/formats/foreign-magic.js';
import { INFO_SCHEMA } from '../../src/tools/json-schemas.js';
import { makeTempDir, sha256File, type TempDir } from '../helpers/images.js';
import { runTool } from '../helpers/clients.js';
import { CLI_PATH, nbdPython, requireNbdPython, startServer } from '../helpers/server.js';
import { requireTool } from '../helpers/tools.js';
import { expectSchema, runOk } from '../tools/tool-helpers.js';

const hasQemu = requireTool('qemu-img') && requireTool('qemu-io');
const hasNbdPython = requireNbdPython();
const MiB = 1024 * 1024;

interface Vector {
  /** File name in the temp dir. */
  readonly file: string;
  /** What cownbd must detect (qemu-img's name). */
  readonly format: string;
  /** qemu-img create arguments before FILE SIZE. */
  readonly create: readonly string[];
}

const LUKS_SECRET = ['--object', 'secret,id=s0,data=x'];
const VECTORS: readonly Vector[] = [
  { file: 'v3.qcow2', format: 'qcow2', create: ['-f', 'qcow2'] },
  { file: 'v2.qcow2', format: 'qcow2', create: ['-f', 'qcow2', '-o', 'compat=0.10'] },
  { file: 'v1.qcow', format: 'qcow', create: ['-f', 'qcow'] },
  { file: 'disk.qed', format: 'qed', create: ['-f', 'qed'] },
  { file: 'sparse.vmdk', format: 'vmdk', create: ['-f', 'vmdk'] },
  { file: 'flat.vmdk', format: 'vmdk', create: ['-f', 'vmdk', '-o', 'subformat=monolithicFlat'] },
  { file: 'disk.vhdx', format: 'vhdx', create: ['-f', 'vhdx'] },
  { file: 'dynamic.vhd', format: 'vpc', create: ['-f', 'vpc'] },
  { file: 'fixed.vhd', format: 'vpc', create: ['-f', 'vpc', '-o', 'subformat=fixed'] },
  { file: 'disk.vdi', format: 'vdi', create: ['-f', 'vdi'] },
  { file: 'disk.parallels', format: 'parallels', create: ['-f', 'parallels'] },
  { file: 'disk.luks', format: 'luks', create: [...LUKS_SECRET, '-f', 'luks', '-o', 'key-secret=s0'] },
];

let tmp: TempDir;

/**
 * The real CLI, run asynchronously (dozens of runs per test: a synchronous spawn would
 * block the worker long enough for vitest's RPC to time out), in the vectors' directory.
 */
async function cli(args: string[], opts: { cwd?: string } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const r = await runTool(process.execPath, [CLI_PATH, ...args], { cwd: opts.cwd ?? tmp.path });
  return { status: r.timedOut ? null : r.code, stdout: r.stdout, stderr: r.stderr };
}

async function cliJson(args: string[], opts: { cwd?: string } = {}): Promise<Record<string, any>> {
  const r = await cli([...args, '--json'], opts);
  expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(0);
  return JSON.parse(r.stdout);
}
/** sha256 of every vector as qemu-img made it (nothing may change a byte). */
const made = new Map<string, string>();

beforeAll(() => {
  tmp = makeTempDir('foreign-');
  if (!hasQemu) return;
  for (const v of VECTORS) {
    // LUKS: qemu-img's PBKDF2 timing can fail on a loaded machine ("Unable to get accurate CPU usage"): retry.
    for (let attempt = 1; ; attempt++) {
      try {
        runOk('qemu-img', ['create', '-q', ...v.create, tmp.file(v.file), '3M']);
        break;
      } catch (err) {
        if (attempt >= 5 || !/accurate CPU usage/.test(String(err))) throw err;
      }
    }
    made.set(v.file, sha256File(tmp.file(v.file)));
  }
  // Some data in the images, as a user's would have (qemu-io writes through the format).
  runOk('qemu-io', ['-f', 'qcow2', '-c', 'write -P 0x5a 64k 128k', tmp.file('v3.qcow2')]);
  made.set('v3.qcow2', sha256File(tmp.file('v3.qcow2')));
  // An overlay to rebase onto / commit into a foreign image.
  runOk('qemu-img', ['create', '-q', '-f', 'raw', tmp.file('base.raw'), '3M']);
  runOk(process.execPath, [CLI_PATH, 'create', '-f', 'cow', tmp.file('r.cow'), '--backing', tmp.file('base.raw')]);
});
afterAll(() => tmp.cleanup());

/** The file's first FOREIGN_HEAD_BYTES and last FOREIGN_TAIL_BYTES, as the registry reads them. */
function ends(file: string): { head: Buffer; tail: Buffer | undefined } {
  const size = statSync(file).size;
  const fd = openSync(file, 'r');
  try {
    const head = Buffer.alloc(Math.min(size, FOREIGN_HEAD_BYTES));
    readSync(fd, head, 0, head.length, 0);
    if (size < FOREIGN_HEAD_BYTES + FOREIGN_TAIL_BYTES) return { head, tail: undefined };
    const tail = Buffer.alloc(FOREIGN_TAIL_BYTES);
    readSync(fd, tail, 0, tail.length, size - FOREIGN_TAIL_BYTES);
    return { head, tail };
  } finally {
    closeSync(fd);
  }
}

/** `qemu-img info` of a vector, as qemu-img reads it (-f: fixed VHD is probed as raw by qemu-img itself). */
function qemuInfo(v: Vector): { format: string; 'virtual-size': number } {
  const args = ['info', '--output=json', ...(v.format === 'luks' ? [] : ['-f', v.format]), tmp.file(v.file)];
  return JSON.parse(runOk('qemu-img', args)) as { format: string; 'virtual-size': number };
}

/** A refusal: status 1, ONE line on stderr naming the path, the format and what to do. */
function expectRefusal(r: { status: number | null; stderr: string }, v: Vector, rawOption: string, shownPath = v.file): void {
  expect(r.status, r.stderr).toBe(1);
  const lines = r.stderr.trimEnd().split('\n');
  expect(lines, r.stderr).toHaveLength(1);
  expect(lines[0]).toContain(`'${shownPath}' is a `);
  // qcow2 is read when named (src/formats/qcow2/): the refusal says how; the others say convert.
  if (FOREIGN_FORMATS.find((f) => f.name === v.format)!.readableWhenNamed) expect(lines[0]).toContain(`cownbd reads it read-only when named: -r -f ${v.format}`);
  else expect(lines[0]).toContain(`qemu-img convert -f ${v.format} -O raw`);
  expect(lines[0]).toContain(`give ${rawOption} if the file really is a raw disk`);
  expect(FOREIGN_FORMATS.find((f) => f.name === v.format)!.title.length).toBeGreaterThan(0);
  expect(lines[0]).toContain(FOREIGN_FORMATS.find((f) => f.name === v.format)!.title);
}

function expectUnchanged(v: Vector): void {
  expect(sha256File(tmp.file(v.file)), `${v.file} was modified`).toBe(made.get(v.file));
}

describe.runIf(hasQemu)('foreign images made by qemu-img', () => {
  it.each(VECTORS)('$file: the magic table and `info` name it $format, with the size qemu-img reports', async (v) => {
    const { head, tail } = ends(tmp.file(v.file));
    const found = detectForeign(head, tail);
    expect(found?.name).toBe(v.format);
    const q = qemuInfo(v);
    expect(q.format).toBe(v.format);
    const info = await cliJson(['info', v.file]);
    expectSchema(INFO_SCHEMA, info);
    expect(info).toMatchObject({ filename: v.file, format: v.format, allocatedBytes: null, backing: null });
    expect(info.foreign.message).toContain(`'${v.file}' is a `);
    // The size the header states, where the probed bytes hold it (vhdx, a vmdk descriptor: null).
    const stated = found!.virtualSize?.(head, tail, statSync(tmp.file(v.file)).size);
    expect(info.virtualSize).toBe(stated ?? null);
    if (stated !== undefined) expect(stated).toBe(q['virtual-size']);
    else expect(['vhdx', 'vmdk']).toContain(v.format);
    const text = await cli(['info', v.file]);
    expect(text.status).toBe(0);
    expect(text.stdout).toMatch(new RegExp(`^file format: ${v.format}$`, 'm'));
    // With -f raw, info describes the bytes as raw (what -f raw serves).
    expect((await cliJson(['info', '-f', 'raw', v.file])).format).toBe('raw');
    expectUnchanged(v);
  });

  it.each(VECTORS)('$file: serve IMAGE, --export, the image tool and publish refuse it; the file is unchanged', async (v) => {
    expectRefusal(await cli(['serve', '-p', '0', v.file, '--run', 'true']), v, '-f raw');
    expectRefusal(await cli(['serve', '-p', '0', '-r', v.file, '--run', 'true']), v, '-f raw');
    expectRefusal(await cli(['serve', '-p', '0', '--export', `vm=${v.file},ro`, '--run', 'true']), v, 'format=raw in the definition of export "vm"');
    for (const tool of [['map', v.file], ['convert', '-O', 'raw', v.file, 'out.raw'], ['commit', v.file, '-o', 'out.raw']]) {
      expectRefusal(await cli(tool), v, '-f raw');
    }
    expectRefusal(await cli(['publish', v.file, 's3://bucket/golden', '--s3-endpoint', 'http://127.0.0.1:1']), v, '-f raw');
    // Named as the new backing of a rebase, or the target of an in-place commit (which writes it).
    expectRefusal(await cli(['rebase', 'r.cow', '-b', v.file]), v, '-F raw (--backing-format raw)');
    expectRefusal(await cli(['commit', 'r.cow', '--to', v.file]), v, '-F raw (--backing-format raw)');
    expect(existsSync(tmp.file('out.raw'))).toBe(false);
    expectUnchanged(v);
  });

  it.each(VECTORS)('$file: as a --base, an --ephemeral base, a create/convert backing without a format or an add-cow --image, refused', async (v) => {
    const base = '--base-format raw';
    expectRefusal(await cli(['serve', '-p', '0', '--base', v.file, '--overlay-dir', 'machines', '--create-dirs', '--run', 'true']), v, base);
    expectRefusal(await cli(['serve', '-p', '0', '--ephemeral', v.file, '--run', 'true']), v, base);
    expectRefusal(await cli(['serve', '-p', '0', '--ephemeral', '--base', v.file, '--run', 'true']), v, base);
    const F = '-F raw (--backing-format raw)';
    expectRefusal(await cli(['create', '-f', 'cow', 'top.cow', '--backing', v.file]), v, F);
    // add-cow resolves its backing against its own directory: the message names that path.
    expectRefusal(await cli(['create', '-f', 'add-cow', 'top.add-cow', '--image', 'top.img', '--backing', v.file]), v, F, tmp.file(v.file));
    runOk('qemu-img', ['create', '-q', '-f', 'raw', tmp.file('src.raw'), '3M']);
    expectRefusal(await cli(['convert', '-O', 'cow', 'src.raw', 'top.cow', '-B', v.file]), v, F);
    // Adopted as an add-cow image file it would be written: refused too (no raw override: convert it).
    const adopt = await cli(['create', '-f', 'add-cow', 'adopt.add-cow', '--image', v.file, '--backing', 'base.raw']);
    expect(adopt.status, adopt.stderr).toBe(1);
    expect(adopt.stderr.trimEnd().split('\n')).toHaveLength(1);
    expect(adopt.stderr).toContain(`'${tmp.file(v.file)}' is a ${FOREIGN_FORMATS.find((f) => f.name === v.format)!.title} image: an add-cow image file holds raw guest data`);
    for (const f of ['top.cow', 'top.add-cow', 'top.img', 'adopt.add-cow']) expect(existsSync(tmp.file(f)), f).toBe(false);
    expectUnchanged(v);
  });

  it('the headline bug: `serve vm.qcow2` then a qemu-io write destroyed the qcow2 header; now it never starts', async () => {
    const v = VECTORS[0]!;
    const r = await cli(['serve', '-p', '0', v.file, '--run', 'qemu-io -f raw -c "write -P 0x55 0 64k" "$uri"']);
    expectRefusal(r, v, '-f raw');
    expectUnchanged(v);
    // qemu-img still reads it as the qcow2 it made, data included.
    runOk('qemu-img', ['check', '-f', 'qcow2', tmp.file(v.file)]);
    runOk('qemu-io', ['-r', '-f', 'qcow2', '-c', 'read -P 0x5a 64k 128k', tmp.file(v.file)]);
  });

  it.runIf(hasNbdPython)('an explicit raw serves every foreign image as its bytes: -f raw, format=raw, --base-format raw', async () => {
    const exports = VECTORS.slice(1).flatMap((v, i) => ['--export', `e${i}=${tmp.file(v.file)},ro,format=raw`]);
    const srv = await startServer(['-r', '-f', 'raw', '-n', 'top', tmp.file(VECTORS[0]!.file), ...exports], { unix: true });
    try {
      const uris = [srv.uri('top'), ...VECTORS.slice(1).map((_, i) => srv.uri(`e${i}`))];
      for (const [i, v] of VECTORS.entries()) {
        const got = await served(uris[i]!);
        expect(got, v.file).toEqual({ size: statSync(tmp.file(v.file)).size, sha256: made.get(v.file) });
      }
    } finally {
      await srv.stop();
    }
    const eph = await startServer(['--ephemeral', '--base-format', 'raw', '--ephemeral-dir', tmp.file('eph'), tmp.file('disk.vdi')], { unix: true });
    try {
      expect(await served(eph.uri(''))).toEqual({ size: statSync(tmp.file('disk.vdi')).size, sha256: made.get('disk.vdi') });
    } finally {
      await eph.stop();
    }
    for (const v of VECTORS) expectUnchanged(v);
  });

  it('backings named inside headers are never probed: a cow made with -F raw over a qcow2 serves its bytes', async () => {
    const v = VECTORS[0]!;
    const created = await cli(['create', '-f', 'cow', 'over.cow', '--backing', v.file, '-F', 'raw']);
    expect(created.status, created.stderr).toBe(0);
    const info = await cliJson(['info', 'over.cow']);
    expect(info.backing).toMatchObject({ format: 'raw', size: statSync(tmp.file(v.file)).size });
    const map = await cli(['map', 'over.cow']);
    expect(map.status, map.stderr).toBe(0);
    const serve = await cli(['serve', '-p', '0', 'over.cow', '--run', 'true']);
    expect(serve.status, serve.stderr).toBe(0);
    expectUnchanged(v);
  });
});

/** Size and sha256 of everything an export serves, read with python3-libnbd. */
async function served(uri: string): Promise<{ size: number; sha256: string }> {
  const out = await nbdPython(
    `import nbd, hashlib
h = nbd.NBD()
h.connect_uri(URI)
size = h.get_size()
d = hashlib.sha256()
off = 0
while off < size:
    n = min(4 << 20, size - off)
    d.update(h.pread(n, off))
    off += n
print(size, d.hexdigest())`,
    { URI: uri },
  );
  const [size, sha256] = out.trim().split(' ');
  return { size: Number(size), sha256: sha256! };
}

describe('what is not foreign', () => {
  it('a partition table (MBR, GPT) is a raw disk: detected as nothing, `info` says raw', async () => {
    const disk = Buffer.alloc(MiB);
    disk[510] = 0x55;
    disk[511] = 0xaa;
    disk.write('EFI PART', 512, 'latin1');
    disk.write('EFI PART', MiB - 512, 'latin1'); // the backup GPT header sits in the last sector
    writeFileSync(tmp.file('gpt.img'), disk);
    expect(detectForeign(disk.subarray(0, FOREIGN_HEAD_BYTES), disk.subarray(MiB - FOREIGN_TAIL_BYTES))).toBeUndefined();
    const info = await cliJson(['info', tmp.file('gpt.img')]);
    expect(info.format).toBe('raw');
    expect(info.foreign).toBeUndefined();
  });

  it('magics qemu-img cannot make here: ESX sparse VMDK (COWD), the DMG trailer, Parallels\' older magic; short files are raw', () => {
    const head = (magic: string, at = 0) => {
      const b = Buffer.alloc(FOREIGN_HEAD_BYTES);
      b.write(magic, at, 'latin1');
      return b;
    };
    expect(detectForeign(head('COWD'))?.name).toBe('vmdk');
    expect(detectForeign(head('WithoutFreeSpace'))?.name).toBe('parallels');
    expect(detectForeign(Buffer.alloc(FOREIGN_HEAD_BYTES), head('koly'))?.name).toBe('dmg');
    expect(detectForeign(Buffer.from('QFI'))).toBeUndefined();
    expect(detectForeign(Buffer.alloc(0))).toBeUndefined();
    // The qcow magic with any version but 1 is refused as qcow2 (qemu-img would not read it as raw either).
    const odd = head('QFI\xfb');
    odd.writeUInt32BE(9, 4);
    expect(detectForeign(odd)?.name).toBe('qcow2');
    expect(detectForeign(Buffer.from('QFI\xfb', 'latin1'))?.name).toBe('qcow2');
  });
});
