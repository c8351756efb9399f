/**
 * JSON Schemas (draft 2020-12) of `--output=json` of info, map and check: the documents
 * qemu-img 7.2 prints (src/tools/qemu-json.ts, qemu-map.ts; docs/image-tool.md "qemu-img's
 * JSON"). Keys qemu-img omits when they do not apply are optional here too. Tests validate
 * the real output against them and compare the keys with qemu-img's own output.
 */
const uint = { type: 'integer', minimum: 0 } as const;
const positive = { type: 'integer', minimum: 1 } as const;

export const QEMU_INFO_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/qemu-info.json',
  title: 'cownbd info --output=json (qemu-img info --output=json)',
  type: 'object',
  additionalProperties: false,
  required: ['filename', 'format', 'actual-size', 'dirty-flag'],
  properties: {
    filename: { type: 'string' },
    format: { type: 'string', description: "qemu-img's format name; cow, add-cow and s3 for cownbd's own" },
    'virtual-size': { ...uint, description: 'absent only for a foreign image whose header is not read this far' },
    'actual-size': { ...uint, description: 'st_blocks * 512' },
    'cluster-size': { ...positive, description: 'qcow2/add-cow: cluster size; cow: its 512-byte sector; s3: chunk size' },
    'backing-filename': { type: 'string', description: 'as stored in the header' },
    'full-backing-filename': { type: 'string', description: "relative names joined to the image's directory, as qemu-img does" },
    'backing-filename-format': { type: 'string' },
    'format-specific': {
      type: 'object',
      additionalProperties: false,
      required: ['type', 'data'],
      properties: { type: { enum: ['qcow2', 'cow', 'add-cow'] }, data: { type: 'object', description: "qcow2: qemu-img's keys; cow/add-cow: the --json section in kebab-case" } },
    },
    'dirty-flag': { type: 'boolean' },
    snapshots: {
      type: 'array',
      description: 'qcow2 internal snapshots (absent when there are none)',
      items: {
        type: 'object',
        additionalProperties: false,
        required: ['id', 'name', 'vm-state-size', 'date-sec', 'date-nsec', 'vm-clock-sec', 'vm-clock-nsec'],
        properties: {
          id: { type: 'string' },
          name: { type: 'string' },
          'vm-state-size': uint,
          'date-sec': uint,
          'date-nsec': uint,
          'vm-clock-sec': uint,
          'vm-clock-nsec': uint,
          icount: uint,
        },
      },
    },
  },
} as const;

export const QEMU_INFO_CHAIN_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/qemu-info-chain.json',
  title: 'cownbd info --backing-chain --output=json',
  type: 'array',
  minItems: 1,
  items: QEMU_INFO_SCHEMA,
} as const;

export const QEMU_CHECK_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/qemu-check.json',
  title: 'cownbd check --output=json (qemu-img check --output=json)',
  type: 'object',
  additionalProperties: false,
  required: ['filename', 'format', 'check-errors'],
  properties: {
    filename: { type: 'string' },
    format: { type: 'string' },
    'check-errors': uint,
    corruptions: { ...positive, description: 'findings of severity corruption (absent when none)' },
    leaks: { ...positive, description: 'findings of severity leak (absent when none)' },
    'corruptions-fixed': positive,
    'leaks-fixed': { ...positive, description: 'findings --repair / -r fixed' },
    'image-end-offset': { ...positive, description: 'length of the file' },
    'total-clusters': { ...positive, description: 'cow: sectors; add-cow: clusters' },
    'allocated-clusters': { ...positive, description: 'cow: allocated sectors; add-cow: allocated clusters' },
  },
} as const;

export const QEMU_MAP_SCHEMA = {
  $schema: 'https://json-schema.org/draft/2020-12/schema',
  $id: 'https://cownbd.dev/schemas/qemu-map.json',
  title: 'cownbd map --output=json (qemu-img map --output=json)',
  type: 'array',
  items: {
    type: 'object',
    additionalProperties: false,
    required: ['start', 'length', 'depth', 'present', 'zero', 'data'],
    properties: {
      start: uint,
      length: positive,
      depth: { ...uint, description: '0 = FILE itself, 1 = its backing, ... (qemu-img numbering)' },
      present: { type: 'boolean', description: 'a layer holds the range' },
      zero: { type: 'boolean' },
      data: { type: 'boolean' },
      offset: { ...uint, description: "where the bytes are in the holding layer's file (absent: zero or compressed qcow2 clusters, unallocated, s3)" },
    },
  },
} as const;
