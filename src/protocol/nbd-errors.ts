/**
 * Two kinds of failure (docs/protocol.md#errors):
 *   - ProtocolError: the peer broke the protocol (bad magic, over-long string, EOF
 *     mid-message) — the connection is closed, other connections are untouched.
 *   - anything else a request handler throws becomes an NBD error reply via
 *     toNbdError(err), mapped from its errno-style `code`; the connection stays up.
 */
import { NbdError } from './constants.js';

export type ProtocolErrorCode =
  | 'NBD_ERR_EOF'
  | 'NBD_ERR_TRUNCATED'
  | 'NBD_ERR_BAD_MAGIC'
  | 'NBD_ERR_BAD_CLIENT_FLAGS'
  | 'NBD_ERR_TOO_LONG'
  | 'NBD_ERR_TOO_MANY_OPTIONS'
  | 'NBD_ERR_UNKNOWN_EXPORT'
  | 'NBD_ERR_PAYLOAD_TOO_BIG'
  /** A rule of extended headers broken (docs/protocol.md#extended-headers). */
  | 'NBD_ERR_EXTENDED_HEADERS'
  | 'NBD_ERR_TLS_REQUIRED'
  | 'NBD_ERR_TLS'
  | 'NBD_ERR_HANDSHAKE_TIMEOUT';

export class ProtocolError extends Error {
  constructor(
    readonly code: ProtocolErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** errno-style code (DeviceError, Node fs errors) → NBD error value. Unknown → EIO. */
const CODE_TO_NBD: Readonly<Record<string, number>> = {
  EPERM: NbdError.EPERM,
  EROFS: NbdError.EPERM,
  EACCES: NbdError.EPERM,
  EIO: NbdError.EIO,
  ENOMEM: NbdError.ENOMEM,
  EINVAL: NbdError.EINVAL,
  ENOSPC: NbdError.ENOSPC,
  EDQUOT: NbdError.ENOSPC,
  EFBIG: NbdError.ENOSPC,
  EOVERFLOW: NbdError.EOVERFLOW,
  ENOTSUP: NbdError.ENOTSUP,
  EOPNOTSUPP: NbdError.ENOTSUP,
  ESHUTDOWN: NbdError.ESHUTDOWN,
};

export function toNbdError(err: unknown): number {
  if (err instanceof RequestError) return err.nbdError;
  const code = (err as { code?: unknown } | null)?.code;
  return (typeof code === 'string' && CODE_TO_NBD[code]) || NbdError.EIO;
}

/** A request-level rejection decided by the server itself (validation). */
export class RequestError extends Error {
  constructor(
    readonly nbdError: number,
    message: string,
  ) {
    super(message);
    this.name = 'RequestError';
  }
}
