/**
 * The two answers every option handler needs (handshake.ts, header-options.ts): send one option
 * reply, and refuse data on an option that takes none (ERR_INVALID, after the data was read).
 */
import { NbdOpt, nameOf } from '../protocol/constants.js';
import { InvalidOptionError, encodeOptionReply } from '../protocol/handshake-codec.js';

export interface OptionReplySink {
  readonly io: { send(buf: Buffer): void };
}

export function reply(s: OptionReplySink, option: number, type: number, message?: string): void {
  s.io.send(encodeOptionReply(option, type, message ? Buffer.from(message, 'utf8') : undefined));
}

export function requireEmpty(option: number, data: Buffer): void {
  if (data.length !== 0) throw new InvalidOptionError(`${nameOf(NbdOpt, option)} must have no data (got ${data.length} bytes)`);
}
