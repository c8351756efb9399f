/**
 * The capabilities every copy-on-write overlay driver (cow, add-cow) declares, in one
 * place so the drivers and the export providers that describe not-yet-created overlays
 * (INFO must agree with GO) cannot drift apart.
 */
import type { DeviceCapabilities } from '../block/block-device.js';

/**
 * @param writable opened read-write
 * @param canPunchHoles the native addon is present (fallocate): TRIM and fast zeroing.
 *   Without it TRIM is not offered — a hint the spec lets us ignore — rather than a
 *   zero-fill that would outlast a kernel's 4 GiB discard timeout.
 */
export function overlayCapabilities(writable: boolean, canPunchHoles: boolean, multiConn = true): DeviceCapabilities {
  return Object.freeze({
    writable,
    flush: writable,
    fua: writable,
    trim: writable && canPunchHoles,
    zero: writable,
    fastZero: writable && canPunchHoles,
    blockStatus: true,
    cache: false,
    multiConn,
  });
}
