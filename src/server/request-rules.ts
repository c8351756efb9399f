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
  if ((h.flags & ~rule.flags) !== 0) {
    return { error: NbdError.EINVAL, message: `${nameOf(NbdCmd, h.type)}: invalid flags 0x${h.flags.toString(16)}` };
  }
  if ((h.flags & F.DF) !== 0 && !ctx.structured) {
    return { error: NbdError.EINVAL, message: `${nameOf(NbdCmd, h.type)}: DF requires structured replies` };
  }
  if (rule.mutates && !ctx.writable) return { error: NbdError.EPERM, message: `${nameOf(NbdCmd, h.type)}: export is read-only` };
  if (rule.pastEnd !== undefined && (!Number.isSafeInteger(h.offset) || h.offset + h.length > ctx.size)) {
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
