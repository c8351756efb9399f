/**
 * Object-store image addresses: `s3://BUCKET/PREFIX[@VERSION]`.
 *
 *   s3://golden/debian-12            the newest published version of debian-12
 *   s3://golden/debian-12@V          exactly version V (what overlays record: a pinned base)
 *
 * PREFIX names one image; it may contain "/" (s3://golden/os/debian-12). VERSION is the id
 * `cownbd publish` printed (see manifest.ts for its shape). Object keys derived from an
 * address are laid out in docs/object-store.md.
 */

export interface ObjectStoreUri {
  readonly bucket: string;
  /** Image prefix without leading/trailing "/". */
  readonly prefix: string;
  /** Pinned version, or undefined for "the newest". */
  readonly version?: string;
}

const SCHEME = 's3://';
/** S3 bucket naming rules (3-63 chars, lower case, digits, dots, hyphens). */
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
/** Version ids as publish makes them: sortable UTC timestamp + random suffix. */
export const VERSION_PATTERN = /^[0-9]{8}T[0-9]{6}(?:\.[0-9]{3})?Z-[0-9a-f]{8}$/;
const PREFIX_SEGMENT = /^[A-Za-z0-9._-]+$/;

/** True for anything that names an object-store image (callers then use parseObjectStoreUri). */
export function isObjectStoreUri(text: string): boolean {
  return text.startsWith(SCHEME);
}

/** Parse and validate; the error names the part that is wrong. */
export function parseObjectStoreUri(text: string): ObjectStoreUri {
  if (!isObjectStoreUri(text)) throw new Error(`"${text}" is not an object-store address (expected s3://BUCKET/PREFIX[@VERSION])`);
  const rest = text.slice(SCHEME.length);
  const slash = rest.indexOf('/');
  if (slash < 0) throw new Error(`"${text}": missing image prefix (expected s3://BUCKET/PREFIX[@VERSION])`);
  const bucket = rest.slice(0, slash);
  if (!BUCKET.test(bucket)) throw new Error(`"${text}": bucket "${bucket}" is not a valid S3 bucket name (3-63 of a-z 0-9 . -)`);
  let prefix = rest.slice(slash + 1);
  let version: string | undefined;
  const at = prefix.lastIndexOf('@');
  if (at >= 0) {
    version = prefix.slice(at + 1);
    prefix = prefix.slice(0, at);
    if (!VERSION_PATTERN.test(version)) throw new Error(`"${text}": version "${version}" is not a version id (like 20261202T141500Z-1a2b3c4d)`);
  }
  prefix = prefix.replace(/\/+$/, '');
  if (prefix === '') throw new Error(`"${text}": the image prefix is empty`);
  for (const seg of prefix.split('/')) {
    if (!PREFIX_SEGMENT.test(seg) || seg === '.' || seg === '..') {
      throw new Error(`"${text}": prefix segment "${seg}" must be letters, digits, ".", "_", "-" (not "." or "..")`);
    }
  }
  return version === undefined ? { bucket, prefix } : { bucket, prefix, version };
}

export function formatObjectStoreUri(u: ObjectStoreUri): string {
  return `${SCHEME}${u.bucket}/${u.prefix}${u.version ? `@${u.version}` : ''}`;
}

/** Key of the folder holding an image's manifests (one object per version). */
export function manifestFolder(u: ObjectStoreUri): string {
  return `${u.prefix}/manifests/`;
}

export function manifestKey(u: ObjectStoreUri, version: string): string {
  return `${manifestFolder(u)}${version}.json`;
}
