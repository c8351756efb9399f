/**
 * Where a machine's objects live under `--overlay-store s3://BUCKET/PREFIX` (docs/fleet.md,
 * "Object layout"): PREFIX/NAME/ holds its lease, its head and its manifests, so
 * `s3://BUCKET/PREFIX/NAME@VERSION` is an ordinary object-store image address.
 */
import { manifestKey, type ObjectStoreUri } from '../objectstore/uri.js';

/** Machine names are export names (overlay file names): one prefix segment. */
const MACHINE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

export interface MachineKeys {
  readonly bucket: string;
  readonly machine: string;
  /** The machine as an object-store image (no version). */
  readonly image: ObjectStoreUri;
  readonly lease: string;
  readonly head: string;
  manifest(version: string): string;
}

export function machineKeys(store: ObjectStoreUri, machine: string): MachineKeys {
  if (!MACHINE_NAME.test(machine) || machine.includes('..') || machine.length > 128) {
    throw new Error(`machine name "${machine}": only letters, digits, ".", "_" and "-" (no leading "." or "-", no "..", at most 128)`);
  }
  const image: ObjectStoreUri = { bucket: store.bucket, prefix: `${store.prefix}/${machine}` };
  return {
    bucket: store.bucket,
    machine,
    image,
    lease: `${image.prefix}/lease.json`,
    head: `${image.prefix}/head.json`,
    manifest: (version) => manifestKey(image, version),
  };
}
