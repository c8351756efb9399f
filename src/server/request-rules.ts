/**
 * Per-command validation rules (QEMU's trait table instead of nbdkit's if-chain).
 * validateRequest() decides, before any I/O, whether a request may run; handlers then
 * trust their input. The result is an NBD error number (0 = valid) plus a message
 * built only on the error path.
 *
 * Order of checks: unknown command → unknown/invalid flag → read-only → range →
 * size limits → negotiated features. Every failure keeps the connection up.
 */
import { MAX_PAYLOAD, NbdCmd, NbdCmdFlag, NbdError, nameOf } from '../protocol/constants.js';
import type { RequestHeader } from '../protocol/transmission-codec.js';
import { decodeStatusPayload } from '../protocol/extended-codec.js';

export interface CommandRule {
  /** Flags the client may set on this command. */
  readonly flags: number;
  /** The request carries `length` payload bytes (WRITE only, compact headers). */
  readonly hasPayload: boolean;
  /** Refused with EPERM on a read-only export. */
  readonly mutates: boolean;
  /** Error for offset+length past the end, or undefined when offset/length are unused. */
  readonly pastEnd: number | undefined;
  /** Longest allowed length (payload or reply data); undefined = up to 2^32-1. */
  readonly maxLength: number | undefined;
}

const F = NbdCmdFlag;

export const COMMAND_RULES: Readonly<Record<number, CommandRule>> = {
  [NbdCmd.READ]: { flags: F.FUA | F.DF, hasPayload: false, mutates: false, pastEnd: NbdError.EINVAL, maxLength: MAX_PAYLOAD },
  [NbdCmd.WRITE]: { flags: F.FUA, hasPayload: true, mutates: true, pastEnd: NbdError.ENOSPC, maxLength: MAX_PAYLOAD },
  [NbdCmd.DISC]: { flags: 0xffff, hasPayload: false, mutates: false, pastEnd: undefined, maxLength: undefined },
  [NbdCmd.FLUSH]: { flags: F.FUA, hasPayload: false, mutates: false, pastEnd: undefined, maxLength: undefined },
  [NbdCmd.TRIM]: { flags: F.FUA, hasPayload: false, mutates: true, pastEnd: NbdError.EINVAL, maxLength: undefined },
  [NbdCmd.CACHE]: { flags: F.FUA, hasPayload: false, mutates: false, pastEnd: NbdError.EINVAL, maxLength: undefined },
  [NbdCmd.WRITE_ZEROES]: {
    flags: F.FUA | F.NO_HOLE | F.FAST_ZERO,
    hasPayload: false,
    mutates: true,
    pastEnd: NbdError.ENOSPC,
    maxLength: undefined,
  },
  [NbdCmd.BLOCK_STATUS]: { flags: F.FUA | F.REQ_ONE, hasPayload: false, mutates: false, pastEnd: NbdError.EINVAL, maxLength: undefined },
};

/** What validation needs to know about the negotiated session. */
export interface ValidationContext {
  readonly size: number;
  readonly writable: boolean;
  readonly structured: boolean;
  /** At least one meta context was selected for this export. */
  readonly hasContexts: boolean;
  /** Extended headers: PAYLOAD_LEN is valid on WRITE (docs/protocol.md#extended-headers). */
  readonly extended?: boolean;
  /** BLOCK_STATUS_PAYLOAD was advertised: PAYLOAD_LEN is valid on BLOCK_STATUS too. */
  readonly statusPayload?: boolean;
}

export interface Rejection {
  readonly error: number;
  readonly message: string;
}

/** undefined when the request may run; otherwise the error to reply. */
export function validateRequest(h: RequestHeader, ctx: ValidationContext): Rejection | undefined {
  const rule = COMMAND_RULES[h.type];
  // Names are built only on the error path: this runs for every request.
  if (!rule) return { error: NbdError.EINVAL, message: `unknown command ${h.type}` };
  const payloadForm = ctx.extended === true && (h.type === NbdCmd.WRITE || (h.type === NbdCmd.BLOCK_STATUS && ctx.statusPayload === true));
  if (((payloadForm ? h.flags & ~F.PAYLOAD_LEN : h.flags) & ~rule.flags) !== 0) {
    return { error: NbdError.EINVAL, message: `${nameOf(NbdCmd, h.type)}: invalid flags 0x${h.flags.toString(16)}` };
  }
  if ((h.flags & F.DF) !== 0 && !ctx.structured) {
    return { error: NbdError.EINVAL, message: `${nameOf(NbdCmd, h.type)}: DF requires structured replies` };
  }
  if (rule.mutates && !ctx.writable) return { error: NbdError.EPERM, message: `${nameOf(NbdCmd, h.type)}: export is read-only` };
  // Extended headers carry u64 lengths: one above 2^53 is not exact as a number, and too large anyway.
  if (rule.pastEnd !== undefined && (!Number.isSafeInteger(h.offset) || !Number.isSafeInteger(h.length) || h.offset + h.length > ctx.size)) {
    return {
      error: rule.pastEnd,
      message: `${nameOf(NbdCmd, h.type)}: offset=${h.offset} length=${h.length} extends past the end of the export (size=${ctx.size})`,
    };
  }
  if (rule.maxLength !== undefined && h.length > rule.maxLength) {
    return { error: NbdError.EINVAL, message: `${nameOf(NbdCmd, h.type)}: length ${h.length} exceeds the maximum ${rule.maxLength}` };
  }
  if (h.type === NbdCmd.BLOCK_STATUS && !(ctx.structured && ctx.hasContexts)) {
    return { error: NbdError.EINVAL, message: 'BLOCK_STATUS: no metadata context was negotiated' };
  }
  return undefined;
}

/**
 * A BLOCK_STATUS that carried a payload (extended headers, BLOCK_STATUS_PAYLOAD): the request to
 * validate and run — its length is the payload's effect length, PAYLOAD_LEN is dropped — or the
 * EINVAL the specification asks for (malformed payload, an id twice, an id that was not
 * negotiated). `selected` are the context ids negotiated for this export.
 */
export function statusPayloadRequest(h: RequestHeader, payload: Buffer, selected: readonly number[]): RequestHeader | Rejection {
  const decoded = decodeStatusPayload(payload);
  if (typeof decoded === 'string') return { error: NbdError.EINVAL, message: decoded };
  const unknown = decoded.ids.find((id) => !selected.includes(id));
  if (unknown !== undefined) return { error: NbdError.EINVAL, message: `BLOCK_STATUS payload names context id ${unknown}, which was not negotiated` };
  return { ...h, flags: h.flags & ~F.PAYLOAD_LEN, length: decoded.length };
}
