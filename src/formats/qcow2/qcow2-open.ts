/**
 * Opening a qcow2 image: header → L1 table → backing device → Qcow2Device.
 *
 * Read-only, always: an open asking for write access is refused with one line saying what
 * to do (cownbd serves qcow2 as a read-only image or a base under a cow overlay).
 *
 * Backing file (docs/qcow2-format.md, "Backing files"): the name in the header, resolved
 * against the image's directory when relative (QEMU's rule), mapped by --backing-path-map,
 * opened read-only through req.openBacking (so --allow-path applies: the name came from a
 * header). Its format is the operator's --backing-format, else the header's backing-format
 * extension; never probed — an image that records no format and has no operator's format
 * is refused with that remedy. Protocol names (nbd:, json:, …) are refused: only files.
 */
import path from 'node:path';
import { openChecked } from '../../block/open-guard.js';
import { DeviceError, type BlockDevice } from '../../block/block-device.js';
import { readFully } from '../../block/file-io.js';
import type { FileHandle } from 'node:fs/promises';
import { isObjectStoreUri } from '../../objectstore/uri.js';
import { quotedPath } from '../../util/quoted-path.js';
import type { HostOffsets, OpenRequest } from '../format-record.js';
import { mapRecordedPath, type PathMapping } from '../path-map.js';
import { Qcow2Device } from './qcow2-device.js';
import { headerReadLength, parseQcow2Header, type Qcow2Header } from './qcow2-header.js';
import { Qcow2Map } from './qcow2-map.js';

export interface Qcow2File {
  readonly fh: FileHandle;
  readonly fileLength: number;
  readonly header: Qcow2Header;
}

/** Open `file` read-only and decode its header; the caller closes `fh`. */
export async function readQcow2File(file: string, open: Pick<OpenRequest, 'referenced'> & { guard?: OpenRequest['io']['guard'] } = {}): Promise<Qcow2File> {
  const fh = await openChecked(file, { writable: false, what: open.referenced ? 'backing file' : 'image', referenced: open.referenced, guard: open.guard });
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new DeviceError('EINVAL', `${file}: not a regular file`);
    const head = Buffer.alloc(headerReadLength(st.size));
    await readFully(fh, 0, head, head.length);
    let header: Qcow2Header;
    try {
      header = parseQcow2Header(head, st.size);
    } catch (err) {
      throw new DeviceError('EINVAL', `${file}: invalid qcow2 image: ${(err as Error).message}`);
    }
    return { fh, fileLength: st.size, header };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/** Where a recorded backing name points (undefined: the image has none). */
export function resolveQcow2Backing(image: string, name: string | undefined, pathMap?: readonly PathMapping[]): string | undefined {
  if (name === undefined) return undefined;
  if (isObjectStoreUri(name)) return name;
  if (/^[a-z][a-z0-9+.-]*:/i.test(name) && !name.startsWith('/')) {
    throw new DeviceError('ENOTSUP', `${image}: backing file ${quotedPath(name)} is not a file name (protocol and json: backings are not supported)`);
  }
  return mapRecordedPath(path.resolve(path.dirname(path.resolve(image)), name), pathMap);
}

/** The backing format to use: the operator's, else the header's; never probed. */
export function qcow2BackingFormat(image: string, header: Qcow2Header, override: string | undefined, known: readonly string[]): string {
  const name = override ?? header.backingFormat;
  if (name === undefined || name === '') {
    throw new DeviceError('EINVAL', `${image}: backing file ${quotedPath(header.backingName ?? '')} has no recorded format (no backing-format header extension); give --backing-format (backings are never probed)`);
  }
  if (!known.includes(name)) throw new DeviceError('ENOTSUP', `${image}: backing file format "${name}" is not supported (supported: ${known.join(', ')})`);
  return name;
}

export async function openQcow2(file: string, req: OpenRequest): Promise<BlockDevice> {
  if (!req.readOnly) {
    throw new DeviceError('EPERM', `${file}: qcow2 images are served read-only: add -r (or ,ro to --export), or use it as --base under a cow overlay`);
  }
  const { fh, fileLength, header } = await readQcow2File(file, { referenced: req.referenced, guard: req.io.guard });
  let backing: BlockDevice | undefined;
  try {
    const l1 = Buffer.alloc(header.l1Size * 8);
    await readFully(fh, header.l1TableOffset, l1, l1.length);
    const backingPath = req.backingFile !== undefined ? path.resolve(req.backingFile) : resolveQcow2Backing(file, header.backingName, req.pathMap);
    let backingFormat: string | undefined;
    if (backingPath !== undefined) {
      backingFormat = qcow2BackingFormat(file, header, req.backingFormat, req.knownFormats);
      backing = await req.openBacking(backingPath, backingFormat).catch((err: NodeJS.ErrnoException) => {
        // Name the image whose header named the backing: the error alone names only the backing.
        const code = err instanceof DeviceError ? err.code : 'EIO';
        throw new DeviceError(code, `${file}: cannot open backing file ${quotedPath(header.backingName ?? backingPath)} (${quotedPath(backingPath)}) as ${backingFormat}: ${err.message}`);
      });
    }
    return new Qcow2Device({ path: file, fh, fileLength, header, l1, backing, backingPath, backingFormat, io: req.io });
  } catch (err) {
    await backing?.close().catch(() => {});
    await fh.close();
    throw err;
  }
}

/**
 * Where the active layer of `file` keeps guest ranges (map --output=json's offsets): data
 * clusters at their host offset; zero and compressed clusters at none (qemu-img reports none
 * for them either). Reads the L1 table and L2 slices of `file` alone, uncached.
 */
export async function qcow2HostOffsets(file: string): Promise<HostOffsets> {
  const { fh, header } = await readQcow2File(file);
  try {
    const l1 = Buffer.alloc(header.l1Size * 8);
    await readFully(fh, header.l1TableOffset, l1, l1.length);
    const source = {
      slice: async (at: number, len: number): Promise<Buffer> => {
        const b = Buffer.alloc(len);
        await readFully(fh, at, b, len);
        return b;
      },
    };
    const map = new Qcow2Map(header, l1, source, file);
    return {
      at: async (start, length) => (await map.mapRange(start, length)).map((p) => [p.length, p.kind === 'data' ? p.host : undefined] as const),
      close: () => fh.close(),
    };
  } catch (err) {
    await fh.close();
    throw err;
  }
}
