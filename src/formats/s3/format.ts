/**
 * The s3 record: a published image in an S3-compatible object store
 * (`s3://BUCKET/PREFIX[@VERSION]`, docs/object-store.md), always read-only — the base of
 * cow overlays, never written. It claims specs by their scheme, so such a base needs no
 * format name anywhere (a cow header records the pinned address; the configured backing
 * format does not apply). The device and its chunk cache live in src/objectstore/; this
 * record is the seam. Loaded lazily: the S3 client is only imported when one is opened.
 */
import { isObjectStoreUri } from '../../objectstore/uri.js';
import type { FormatRecord } from '../format-record.js';

export const s3Format: FormatRecord = {
  name: 's3',
  summary: 'published image in an S3-compatible object store (read-only)',
  overlay: false,
  claims: isObjectStoreUri,
  async open(spec, req) {
    if (!req.objectStore) throw new Error(`${spec}: object-store images need object-store access (this command has no --s3-endpoint/--cache-dir options)`);
    // The device is read-only whatever was asked: writes through it are refused (EPERM).
    const { openObjectStoreBase } = await import('../../objectstore/open.js');
    return openObjectStoreBase(spec, await req.objectStore());
  },
  inspect(spec) {
    // `cownbd info s3://…` asks the store directly (src/objectstore/info.ts).
    return Promise.reject(new Error(`${spec}: use cownbd info with the object-store options`));
  },
};
