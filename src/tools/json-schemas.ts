/**
 * JSON Schemas (draft 2020-12) of every `--json` output of the image tool. These are the
 * contract documented in docs/image-tool.md; tests validate real CLI output against them.
 * Integers are byte counts or offsets unless named otherwise; paths are strings as given
 * or resolved (see each description).
 */
import { FOREIGN_FORMATS } from '../formats/foreign-magic.js';
import { FORMAT_NAMES as REGISTERED, FORMATS } from '../formats/registry.js';
import { QEMU_CHECK_SCHEMA, QEMU_INFO_CHAIN_SCHEMA, QEMU_INFO_SCHEMA, QEMU_MAP_SCHEMA } from './qemu-json-schemas.js';


/** Format names come from the registry (a new format appears in the schemas by itself). */
const FORMAT_NAMES = [...REGISTERED];
const OVERLAY_FORMAT_NAMES = FORMATS.filter((f) => f.overlay).map((f) => f.name);
/** What `info` may call an image it will not serve (formats/foreign-magic.ts). */
const FOREIGN_NAMES = FOREIGN_FORMATS.map((f) => f.name).filter((n) => !FORMAT_NAMES.includes(n));
/** What convert can write (qcow2 is read-only). */
const CREATABLE_FORMAT_NAMES = FORMATS.filter((f) => f.create).map((f) => f.name);

const uint = { type: 'integer', minimum: 0 } as const;
const nullableUint = { type: ['integer', 'null'], minimum: 0 } as const;
const nullableString = { type: ['string', 'null'] } as const;
const checkResult = { enum: ['ok', 'mismatch', 'missing', 'not-applicable', 'not-checked'] } as const;

export const BACKING_SCHEMA = {
  type: 'object',
  additionalProperties: false,
  required: ['stored', 'resolved', 'format', 'exists', 'size', 'expectedSize', 'sizeCheck', 'expectedMtime', 'actualMtime', 'mtimeCheck', 'message'],
  properties: {
    stored: { ...nullableString, description: 'backing path exactly as stored in the header' },
    resolved: { ...nullableString, description: 'absolute path it resolves to (cow UML layouts: against the CWD; QEMU/add-cow: the overlay directory)' },
    format: nullableString,
    exists: { type: 'boolean' },
    size: { ...nullableUint, description: 'backing size (raw: file size; otherwise virtual size)' },
    expectedSize: { ...nullableUint, description: 'cow: header size field; add-cow: null (no identity check)' },
    sizeCheck: checkResult,
    expectedMtime: { type: ['integer', 'null'], description: 'cow: header mtime (u32; QEMU layouts i32)' },
    actualMtime: { type: ['integer', 'null'], description: 'whole-second st_mtime of the backing file' },
    mtimeCheck: checkResult,
    message: { ...nullableString, description: 'first failed check, in UML wording' },
  },
} as const;

export const INFO_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/info.json',
  title: 'cownbd info --json',
  type: 'object',
  additionalProperties: false,
  required: ['filename', 'format', 'virtualSize', 'apparentSize', 'actualSize', 'allocatedBytes', 'backing', 'commitInProgress'],
  properties: {
    filename: { type: 'string' },
    format: { enum: [...FORMAT_NAMES, ...FOREIGN_NAMES], description: 'a foreign format (qemu-img\'s name) only with `foreign`' },
    virtualSize: { ...nullableUint, description: 'null only for a foreign image whose header states no size in the bytes probed' },
    apparentSize: { ...uint, description: 'st_size of the file' },
    actualSize: { ...uint, description: 'st_blocks * 512 (space used on disk)' },
    allocatedBytes: { ...nullableUint, description: 'bytes of the virtual disk held by this layer itself (null: a foreign image)' },
    backing: { oneOf: [{ type: 'null' }, BACKING_SCHEMA] },
    foreign: {
      type: 'object',
      additionalProperties: false,
      required: ['title', 'message'],
      description: 'a format cownbd does not serve (without -f raw): what it is, and the refusal serve prints',
      properties: { title: { type: 'string' }, message: { type: 'string' } },
    },
    cow: {
      type: 'object',
      additionalProperties: false,
      required: ['layout', 'version', 'headerSize', 'mtime', 'size', 'sectorSize', 'alignment', 'bitmapOffset', 'bitmapLength', 'dataOffset', 'sectors', 'representableSectors', 'allocatedSectors'],
      properties: {
        layout: { enum: ['v1', 'v2', 'v3', 'v3-broken', 'qemu-i386', 'qemu-x86_64'] },
        version: { enum: [1, 2, 3] },
        headerSize: uint,
        mtime: { type: 'integer' },
        size: { ...uint, description: 'header size field = backing file size' },
        sectorSize: uint,
        alignment: uint,
        bitmapOffset: uint,
        bitmapLength: uint,
        dataOffset: uint,
        sectors: uint,
        representableSectors: { ...uint, description: '< sectors when the layout has no bit for some sectors (short v1/v2 bitmap, QEMU partial last sector)' },
        allocatedSectors: uint,
      },
    },
    addCow: {
      type: 'object',
      additionalProperties: false,
      required: ['clusterSize', 'clusterBits', 'headerSize', 'features', 'compatFeatures', 'allAllocated', 'bitmapOffset', 'bitmapLength', 'clusterCount', 'allocatedClusters', 'imageFile'],
      properties: {
        clusterSize: uint,
        clusterBits: { type: 'integer', minimum: 12, maximum: 21 },
        headerSize: uint,
        features: { type: 'string', pattern: '^0x[0-9a-f]+$' },
        compatFeatures: { type: 'string', pattern: '^0x[0-9a-f]+$' },
        allAllocated: { type: 'boolean' },
        bitmapOffset: uint,
        bitmapLength: uint,
        clusterCount: uint,
        allocatedClusters: uint,
        imageFile: {
          type: 'object',
          additionalProperties: false,
          required: ['stored', 'resolved', 'format', 'apparentSize', 'actualSize'],
          properties: { stored: { type: 'string' }, resolved: { type: 'string' }, format: { type: 'string' }, apparentSize: uint, actualSize: uint },
        },
      },
    },
    qcow2: {
      type: 'object',
      additionalProperties: false,
      required: ['compat', 'clusterSize', 'extendedL2', 'compressionType', 'refcountBits', 'snapshots', 'dirty', 'lazyRefcounts', 'l1Size', 'snapshotList'],
      properties: {
        compat: { enum: ['0.10', '1.1'], description: 'qemu-img compat= name of the version: 0.10 = version 2, 1.1 = version 3' },
        clusterSize: { type: 'integer', minimum: 512, maximum: 2097152 },
        extendedL2: { type: 'boolean', description: 'extended L2 entries (32 subclusters per cluster)' },
        compressionType: { enum: ['zlib', 'zstd'] },
        refcountBits: uint,
        snapshots: { ...uint, description: 'internal snapshots (the active layer is what cownbd reads)' },
        dirty: { type: 'boolean', description: 'incompatible bit 0: refcounts may be stale (reading is unaffected; docs/qcow2-format.md)' },
        lazyRefcounts: { type: 'boolean', description: 'compatible bit 0 (lazy refcounts), qemu-img info\'s "lazy-refcounts"' },
        l1Size: { ...uint, description: 'entries of the active L1 table' },
        snapshotList: {
          type: 'array',
          description: 'the internal snapshot table (described only; empty if it cannot be read)',
          items: {
            type: 'object',
            additionalProperties: false,
            required: ['id', 'name', 'vmStateSize', 'dateSec', 'dateNsec', 'vmClockNsec', 'icount'],
            properties: { id: { type: 'string' }, name: { type: 'string' }, vmStateSize: uint, dateSec: uint, dateNsec: uint, vmClockNsec: uint, icount: nullableUint },
          },
        },
      },
    },
    commitInProgress: {
      oneOf: [
        { type: 'null' },
        { type: 'object', additionalProperties: false, required: ['target', 'started'], properties: { target: { type: 'string' }, started: { type: 'string' } } },
      ],
    },
  },
} as const;

const { $schema: _schema, $id: _id, title: _title, ...INFO_ITEM } = INFO_SCHEMA;

export const INFO_CHAIN_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/info-chain.json',
  title: 'cownbd info --json --backing-chain (top layer first)',
  type: 'array',
  minItems: 1,
  items: INFO_ITEM,
} as const;

const FINDING = {
  type: 'object',
  additionalProperties: false,
  required: ['class', 'severity', 'message', 'repairable'],
  properties: {
    class: { enum: ['header', 'file-length', 'tail-bits', 'padding', 'lost-writes', 'backing', 'names', 'image-file', 'commit-incomplete', 'unopenable'] },
    severity: { enum: ['corruption', 'leak', 'info'] },
    message: { type: 'string' },
    repairable: { type: 'boolean' },
  },
} as const;

export const CHECK_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/check.json',
  title: 'cownbd check --json',
  type: 'object',
  additionalProperties: false,
  required: ['filename', 'format', 'result', 'exitCode', 'findings', 'repaired', 'error'],
  properties: {
    filename: { type: 'string' },
    format: { type: 'string' },
    result: { enum: ['clean', 'corrupt', 'leaks', 'error', 'unsupported'] },
    exitCode: { enum: [0, 1, 2, 3] },
    findings: { type: 'array', items: FINDING },
    repaired: { type: 'array', items: FINDING },
    error: nullableString,
  },
} as const;

export const MAP_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/map.json',
  title: 'cownbd map --json',
  type: 'object',
  additionalProperties: false,
  required: ['filename', 'virtualSize', 'extents'],
  properties: {
    filename: { type: 'string' },
    virtualSize: uint,
    extents: {
      type: 'array',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['start', 'length', 'depth', 'zero', 'hole', 'data', 'file'],
        properties: {
          start: uint,
          length: { type: 'integer', minimum: 1 },
          depth: { ...uint, description: 'qemu:allocation-depth: 0 none, 1 this file, 2 its backing, ...' },
          zero: { type: 'boolean' },
          hole: { type: 'boolean' },
          data: { type: 'boolean' },
          file: nullableString,
        },
      },
    },
  },
} as const;

export const COMMIT_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/commit.json',
  title: 'cownbd commit --json',
  type: 'object',
  additionalProperties: false,
  required: ['command', 'mode', 'overlay', 'format', 'target', 'bytesWritten', 'length', 'resumed', 'headerUpdated', 'elapsedMs'],
  properties: {
    command: { const: 'commit' },
    mode: { enum: ['in-place', 'new-file'] },
    overlay: { type: 'string' },
    format: { enum: OVERLAY_FORMAT_NAMES },
    target: { type: 'string' },
    bytesWritten: uint,
    length: uint,
    resumed: { type: 'boolean' },
    headerUpdated: { type: 'boolean' },
    elapsedMs: uint,
  },
} as const;

export const CONVERT_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/convert.json',
  title: 'cownbd convert --json',
  type: 'object',
  additionalProperties: false,
  required: ['command', 'source', 'target', 'outputFormat', 'virtualSize', 'bytesWritten', 'elapsedMs'],
  properties: {
    command: { const: 'convert' },
    source: { type: 'string' },
    target: { type: 'string' },
    outputFormat: { enum: CREATABLE_FORMAT_NAMES },
    virtualSize: uint,
    bytesWritten: uint,
    elapsedMs: uint,
  },
} as const;

export const REBASE_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/rebase.json',
  title: 'cownbd rebase --json',
  type: 'object',
  additionalProperties: false,
  required: ['command', 'overlay', 'format', 'oldBacking', 'newBacking', 'storedBacking', 'unsafe', 'bytesCopied', 'elapsedMs'],
  properties: {
    command: { const: 'rebase' },
    overlay: { type: 'string' },
    format: { enum: OVERLAY_FORMAT_NAMES },
    oldBacking: nullableString,
    newBacking: { type: 'string' },
    storedBacking: { type: 'string', description: 'the path now stored in the header' },
    unsafe: { type: 'boolean' },
    bytesCopied: uint,
    elapsedMs: uint,
  },
} as const;

export const SCHEMAS = {
  info: INFO_SCHEMA,
  infoChain: INFO_CHAIN_SCHEMA,
  check: CHECK_SCHEMA,
  map: MAP_SCHEMA,
  commit: COMMIT_SCHEMA,
  convert: CONVERT_SCHEMA,
  rebase: REBASE_SCHEMA,
  // --output=json of info, map, check: qemu-img's documents (qemu-json-schemas.ts).
  qemuInfo: QEMU_INFO_SCHEMA,
  qemuInfoChain: QEMU_INFO_CHAIN_SCHEMA,
  qemuCheck: QEMU_CHECK_SCHEMA,
  qemuMap: QEMU_MAP_SCHEMA,
} as const;
