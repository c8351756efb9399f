/**
 * The options that choose the transmission header style (docs/protocol.md#extended-headers):
 *
 *   (none)             compact requests (28 bytes), simple replies only
 *   STRUCTURED_REPLY   compact requests, structured chunks (20-byte headers) for data, status
 *                      and errors; simple replies still allowed for the rest
 *   EXTENDED_HEADERS   32-byte requests with u64 lengths and PAYLOAD_LEN, 32-byte reply chunks
 *                      for every reply; includes everything STRUCTURED_REPLY enables
 *
 * Rules (the specification's extended-headers section, as QEMU's server applies them):
 * EXTENDED_HEADERS is accepted with or without STRUCTURED_REPLY before it; once it is on,
 * STRUCTURED_REPLY (a downgrade) is answered ERR_EXT_HEADER_REQD, a second EXTENDED_HEADERS
 * ERR_INVALID, and EXPORT_NAME closes (handshake.ts). Meta contexts already selected stay
 * selected: ours are 32-bit contexts, valid in both styles. STARTTLS forgets the style.
 */
import { NbdFlag, NbdOpt, NbdRep } from '../protocol/constants.js';
import { InvalidOptionError } from '../protocol/handshake-codec.js';
import type { State as HandshakeState } from './handshake.js';
import { reply, requireEmpty } from './option-reply.js';

function answer(s: HandshakeState, option: number, type: number, message?: string): undefined {
  reply(s, option, type, message);
  return undefined;
}

export async function handleOptStructuredReply(s: HandshakeState, data: Buffer): Promise<undefined> {
  requireEmpty(NbdOpt.STRUCTURED_REPLY, data);
  if (s.extended) return answer(s, NbdOpt.STRUCTURED_REPLY, NbdRep.ERR_EXT_HEADER_REQD, 'extended headers are already negotiated');
  // A repeated STRUCTURED_REPLY is acknowledged again, as it always was here.
  s.structured = true;
  return answer(s, NbdOpt.STRUCTURED_REPLY, NbdRep.ACK);
}

export async function handleOptExtendedHeaders(s: HandshakeState, data: Buffer): Promise<undefined> {
  requireEmpty(NbdOpt.EXTENDED_HEADERS, data);
  if (s.extended) throw new InvalidOptionError('extended headers are already negotiated');
  s.extended = true;
  s.structured = true;
  return answer(s, NbdOpt.EXTENDED_HEADERS, NbdRep.ACK);
}

/**
 * The flags the header style adds to an export's transmission flags: BLOCK_STATUS_PAYLOAD only
 * with extended headers and only when contexts are selected for `exportName` (the specification
 * forbids it without extended headers and discourages it without contexts). INFO and GO call
 * this alike, so they agree.
 */
export function headerStyleFlags(s: HandshakeState, exportName: string, flags: number): number {
  const contexts = s.metaExport === exportName && s.metaIds.length > 0;
  return s.extended && contexts ? flags | NbdFlag.BLOCK_STATUS_PAYLOAD : flags;
}
