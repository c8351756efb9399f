/**
 * Fixed-newstyle option haggling (docs/protocol.md#options): one handleOpt* per
 * option, a dispatch table, and bounds against abusive clients.
 *
 *   greeting ─► client flags ─► loop { option header, data, handleOpt*(…) }
 *                                   └─► GO / EXPORT_NAME success: return the session
 *
 * Every option's data is read completely BEFORE it is judged, so a rejected option never
 * desynchronises the stream. Protocol violations (bad magic, unknown client flags,
 * over-long strings, too many options, EXPORT_NAME of an unknown export) throw
 * ProtocolError and the connection closes; everything else is answered with an
 * NBD_REP_ERR_* and haggling continues.
 */
import {
  META_BASE_ALLOCATION,
  META_QEMU_ALLOCATION_DEPTH,
  NbdClientFlag,
  NbdHandshakeFlag,
  NbdInfo,
  NbdOpt,
  NbdRep,
  OPTION_HEADER_SIZE,
  nameOf,
} from '../protocol/constants.js';
import {
  InvalidOptionError,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeString,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
} from '../protocol/handshake-codec.js';
import type { ByteReader } from '../protocol/byte-reader.js';
import { ProtocolError } from '../protocol/nbd-errors.js';
import type { Logger } from '../logging.js';
import type { TlsMode } from './tls.js';
import { handleOptExtendedHeaders, handleOptStructuredReply, headerStyleFlags } from './header-options.js';
import { reply, requireEmpty } from './option-reply.js';
import {
  blockSizeConstraints,
  transmissionFlags,
  type ExportContext,
  type ExportHandle,
  type ExportInfo,
  type ExportProvider,
} from './exports.js';

/** More options than this on one connection is treated as abuse. */
export const MAX_OPTIONS = 1000;
/**
 * Extra options allowed per export a LIST returned: clients such as `nbdinfo --list` send
 * INFO and LIST_META_CONTEXT for every listed export (nbdkit grants 32 per export too).
 */
export const OPTIONS_PER_LISTED_EXPORT = 32;
/** Option data above this is not buffered (names ≤ 4096; a few hundred queries fit). */
export const MAX_OPTION_LENGTH = 64 * 1024;

/** Meta context ids (unique per connection; fixed since we offer only two). */
export const CONTEXT_ID_BASE_ALLOCATION = 1;
export const CONTEXT_ID_ALLOCATION_DEPTH = 2;
const CONTEXTS: ReadonlyArray<{ id: number; name: string }> = [
  { id: CONTEXT_ID_BASE_ALLOCATION, name: META_BASE_ALLOCATION },
  { id: CONTEXT_ID_ALLOCATION_DEPTH, name: META_QEMU_ALLOCATION_DEPTH },
];

/** What the transmission phase needs from haggling. */
export interface NegotiatedSession {
  readonly handle: ExportHandle;
  /** True with extended headers too (they include what structured replies enable). */
  readonly structured: boolean;
  /** 32-byte request and reply headers (docs/protocol.md#extended-headers). */
  readonly extended: boolean;
  readonly transmissionFlags: number;
  /** Context ids selected by SET_META_CONTEXT for this export (0 = not selected). */
  readonly baseAllocationId: number;
  readonly allocationDepthId: number;
}

export interface HandshakeIo {
  readonly reader: ByteReader;
  send(buf: Buffer): void;
  readonly log: Logger;
  readonly provider: ExportProvider;
  readonly ctx: ExportContext;
  /** True once the server is stopping: options get ERR_SHUTDOWN. */
  shuttingDown(): boolean;
  /** An option (header and data) was completely received (restarts the idle clock). */
  optionReceived?(): void;
  /** STARTTLS support (absent = TLS off). */
  readonly tls?: HandshakeTls;
}

export interface HandshakeTls {
  readonly mode: TlsMode;
  active(): boolean;
  /** Called after the ACK to STARTTLS is queued; resolves once TLS is up (throws = close). */
  start(): Promise<void>;
}

/** Exported for header-options.ts, the header-style option handlers. */
export interface State {
  readonly io: HandshakeIo;
  noZeroes: boolean;
  structured: boolean;
  extended: boolean;
  /** Export named by the last SET_META_CONTEXT, and the ids it selected. */
  metaExport: string | undefined;
  metaIds: number[];
  /** Export names already logged as refused on this connection (clients retry INFO, GO). */
  refused: Set<string>;
  /** Options this connection may send (raised once by LIST, see OPTIONS_PER_LISTED_EXPORT). */
  allowance: number;
  /** A plaintext client on a --tls require server has been logged (once per connection). */
  tlsRefusalLogged: boolean;
}

/** undefined = keep haggling; 'abort' = close softly; a session = enter transmission. */
type OptResult = NegotiatedSession | 'abort' | undefined;
type OptHandler = (s: State, data: Buffer) => Promise<OptResult>;

/** Run the whole handshake. Resolves to the session, or undefined after ABORT. */
export async function negotiate(io: HandshakeIo): Promise<NegotiatedSession | undefined> {
  io.send(encodeGreeting(NbdHandshakeFlag.FIXED_NEWSTYLE | NbdHandshakeFlag.NO_ZEROES));
  const clientFlags = decodeClientFlags(await io.reader.readExactly(4));
  const known = NbdClientFlag.C_FIXED_NEWSTYLE | NbdClientFlag.C_NO_ZEROES;
  if ((clientFlags & ~known) !== 0) {
    // MUST: drop the connection on flags we did not advertise.
    throw new ProtocolError('NBD_ERR_BAD_CLIENT_FLAGS', `unknown client flags 0x${clientFlags.toString(16)}`);
  }
  const s: State = {
    io,
    noZeroes: (clientFlags & NbdClientFlag.C_NO_ZEROES) !== 0,
    structured: false,
    extended: false,
    metaExport: undefined,
    metaIds: [],
    refused: new Set(),
    tlsRefusalLogged: false,
    allowance: MAX_OPTIONS,
  };
  for (let count = 1; ; count++) {
    const { option, length } = decodeOptionHeader(await io.reader.readExactly(OPTION_HEADER_SIZE));
    // Judged when the option arrives: the options before it are all answered.
    if (count > s.allowance) throw new ProtocolError('NBD_ERR_TOO_MANY_OPTIONS', `more than ${s.allowance} options`);
    if (length > MAX_OPTION_LENGTH) {
      throw new ProtocolError('NBD_ERR_TOO_LONG', `option ${nameOf(NbdOpt, option)} data is ${length} bytes (limit ${MAX_OPTION_LENGTH})`);
    }
    const data = await io.reader.readExactly(length);
    io.optionReceived?.();
    io.log.debug({ option: nameOf(NbdOpt, option), length }, 'option');
    const result = await dispatchOption(s, option, data);
    if (result === 'abort') return undefined;
    if (result) return result;
  }
}

async function dispatchOption(s: State, option: number, data: Buffer): Promise<OptResult> {
  if (tlsRequired(s, option)) return undefined;
  const handler = OPTION_HANDLERS[option];
  if (!handler) {
    reply(s, option, NbdRep.ERR_UNSUP, `option ${option} is not supported`);
    return undefined;
  }
  if (s.io.shuttingDown() && option !== NbdOpt.ABORT) {
    if (option === NbdOpt.EXPORT_NAME) throw new ProtocolError('NBD_ERR_UNKNOWN_EXPORT', 'server is shutting down');
    reply(s, option, NbdRep.ERR_SHUTDOWN, 'server is shutting down');
    return undefined;
  }
  try {
    return await handler(s, data);
  } catch (err) {
    // EXPORT_NAME has no error reply: any failure must close, or the client would read
    // an option reply as the export's size and flags.
    if (option === NbdOpt.EXPORT_NAME && !(err instanceof ProtocolError)) {
      throw new ProtocolError('NBD_ERR_UNKNOWN_EXPORT', `EXPORT_NAME refused: ${(err as Error).message}`);
    }
    if (err instanceof InvalidOptionError) {
      reply(s, option, NbdRep.ERR_INVALID, err.message);
      return undefined;
    }
    throw err;
  }
}

/**
 * Look an export up for INFO/GO: ERR_UNKNOWN when absent, and also when it exists but
 * cannot be opened ("the requested export is not available"), then with the reason as
 * the message text, which clients print (nbdinfo, qemu: "server reported: …").
 */
async function findExport<T>(s: State, option: number, name: string, find: () => Promise<T | undefined>): Promise<T | undefined> {
  let found: T | undefined;
  try {
    found = await find();
  } catch (err) {
    s.io.log.warn({ err, export: name }, 'cannot open export');
    const code = (err as { code?: string }).code;
    const reason = `export "${name}" cannot be opened: ${(err as Error)?.message ?? String(err)}`;
    reply(s, option, code === 'ESHUTDOWN' ? NbdRep.ERR_SHUTDOWN : NbdRep.ERR_UNKNOWN, reason.slice(0, 4096));
    return undefined;
  }
  if (!found) {
    logRefused(s, name, option);
    reply(s, option, NbdRep.ERR_UNKNOWN, `export "${name}" not present`);
  }
  return found;
}

/**
 * One line per refused name and connection (names capped at 4096 bytes; logs at 200): warn
 * for GO, debug for INFO, a question libnbd's `nbdinfo --list` asks about "" on every listing.
 */
function logRefused(s: State, name: string, option: number): void {
  // A client guessing names gets 16 lines, not one per option (up to 1000 per connection).
  const key = `${option}:${name}`;
  if (s.refused.has(key) || s.refused.size >= 16) return;
  s.refused.add(key);
  const reason = s.io.provider.refusalReason?.(name) ?? 'no such export';
  const level = option === NbdOpt.INFO ? 'debug' : 'warn';
  s.io.log[level]({ export: name.slice(0, 200), reason, option: nameOf(NbdOpt, option) }, 'refused export name');
}

async function handleOptExportName(s: State, data: Buffer): Promise<OptResult> {
  const name = decodeString(data, 'export name');
  if (s.extended) throw new ProtocolError('NBD_ERR_EXTENDED_HEADERS', 'EXPORT_NAME after EXTENDED_HEADERS (the client must use GO)');
  let handle: ExportHandle | undefined;
  try {
    handle = await s.io.provider.open(name, s.io.ctx);
  } catch (err) {
    throw new ProtocolError('NBD_ERR_UNKNOWN_EXPORT', `EXPORT_NAME "${name}" cannot be opened: ${(err as Error).message}`);
  }
  // EXPORT_NAME has no error reply: the only way to refuse is to close.
  if (!handle) throw new ProtocolError('NBD_ERR_UNKNOWN_EXPORT', `EXPORT_NAME for unknown export "${name}"`);
  const flags = transmissionFlags(handle, s.structured);
  s.io.send(encodeExportNameReply(handle.size, flags, s.noZeroes));
  return session(s, handle, flags);
}

async function handleOptAbort(s: State): Promise<OptResult> {
  reply(s, NbdOpt.ABORT, NbdRep.ACK);
  return 'abort';
}

async function handleOptList(s: State, data: Buffer): Promise<OptResult> {
  requireEmpty(NbdOpt.LIST, data);
  const exports = await s.io.provider.list();
  // Raised, never stacked: repeating LIST cannot buy an unbounded number of options.
  s.allowance = Math.max(s.allowance, MAX_OPTIONS + OPTIONS_PER_LISTED_EXPORT * exports.length);
  for (const e of exports) {
    s.io.send(encodeOptionReply(NbdOpt.LIST, NbdRep.SERVER, encodeServerEntry(e.name, e.description)));
  }
  reply(s, NbdOpt.LIST, NbdRep.ACK);
  return undefined;
}

/**
 * --tls require: before TLS only STARTTLS and ABORT are served; everything else gets
 * ERR_TLS_REQD whatever it names (nothing about exports leaks), and EXPORT_NAME, which
 * has no error reply, closes the connection. True when the option was refused.
 */
function tlsRequired(s: State, option: number): boolean {
  const t = s.io.tls;
  if (t?.mode !== 'require' || t.active() || option === NbdOpt.STARTTLS || option === NbdOpt.ABORT) return false;
  if (option === NbdOpt.EXPORT_NAME) throw new ProtocolError('NBD_ERR_TLS_REQUIRED', 'EXPORT_NAME before STARTTLS on a --tls require server');
  reply(s, option, NbdRep.ERR_TLS_REQD, 'TLS is required: send NBD_OPT_STARTTLS first');
  if (!s.tlsRefusalLogged) {
    // Otherwise a client without TLS leaves no trace: it reads ERR_TLS_REQD and goes away.
    s.tlsRefusalLogged = true;
    s.io.log.warn({ option: nameOf(NbdOpt, option) }, 'client did not start TLS: this server requires it (--tls require); its options are refused');
  }
  return true;
}

async function handleOptStartTls(s: State, data: Buffer): Promise<OptResult> {
  const t = s.io.tls;
  if (!t || t.mode === 'off') {
    reply(s, NbdOpt.STARTTLS, NbdRep.ERR_POLICY, 'TLS is not configured on this server');
    return undefined;
  }
  requireEmpty(NbdOpt.STARTTLS, data);
  if (t.active()) throw new InvalidOptionError('TLS is already active');
  reply(s, NbdOpt.STARTTLS, NbdRep.ACK);
  await t.start();
  // Nothing negotiated in plaintext carries over into the TLS session.
  s.structured = false;
  s.extended = false;
  s.metaExport = undefined;
  s.metaIds = [];
  return undefined;
}

async function handleOptInfo(s: State, data: Buffer): Promise<OptResult> {
  const req = decodeInfoRequest(data);
  const info = await findExport(s, NbdOpt.INFO, req.name, () => s.io.provider.describe(req.name));
  if (info) sendInfoReplies(s, NbdOpt.INFO, info, req.infos, headerStyleFlags(s, info.name, transmissionFlags(info, s.structured)));
  return undefined;
}

async function handleOptGo(s: State, data: Buffer): Promise<OptResult> {
  const req = decodeInfoRequest(data);
  const handle = await findExport(s, NbdOpt.GO, req.name, () => s.io.provider.open(req.name, s.io.ctx));
  if (!handle) return undefined;
  const flags = headerStyleFlags(s, handle.name, transmissionFlags(handle, s.structured));
  sendInfoReplies(s, NbdOpt.GO, handle, req.infos, flags);
  return session(s, handle, flags);
}

function sendInfoReplies(s: State, option: number, info: ExportInfo, requested: readonly number[], flags: number): void {
  const send = (payload: Buffer) => s.io.send(encodeOptionReply(option, NbdRep.INFO, payload));
  // Answer each requested type once; unknown types are ignored (spec).
  for (const type of new Set(requested)) {
    if (type === NbdInfo.NAME) send(encodeInfoText(NbdInfo.NAME, info.name));
    else if (type === NbdInfo.DESCRIPTION && info.description) send(encodeInfoText(NbdInfo.DESCRIPTION, info.description));
    else if (type === NbdInfo.BLOCK_SIZE) send(encodeInfoBlockSize(...blockSizeConstraints(info)));
  }
  send(encodeInfoExport(info.size, flags));
  reply(s, option, NbdRep.ACK);
}

function session(s: State, handle: ExportHandle, flags: number): NegotiatedSession {
  // Contexts selected for another export do not apply (spec: SET_META_CONTEXT names the export).
  const ids = s.metaExport === handle.name ? s.metaIds : [];
  return {
    handle,
    structured: s.structured,
    extended: s.extended,
    transmissionFlags: flags,
    baseAllocationId: ids.includes(CONTEXT_ID_BASE_ALLOCATION) ? CONTEXT_ID_BASE_ALLOCATION : 0,
    allocationDepthId: ids.includes(CONTEXT_ID_ALLOCATION_DEPTH) ? CONTEXT_ID_ALLOCATION_DEPTH : 0,
  };
}

/** Contexts matching `queries`. LIST: no query = all, "ns:" = the whole namespace. */
export function matchContexts(queries: readonly string[], list: boolean): number[] {
  if (queries.length === 0) return list ? CONTEXTS.map((c) => c.id) : [];
  const ids = new Set<number>();
  for (const q of queries) {
    for (const c of CONTEXTS) {
      if (q === c.name || (list && q.endsWith(':') && c.name.startsWith(q))) ids.add(c.id);
    }
  }
  return [...ids].sort((a, b) => a - b);
}

async function handleOptListMetaContext(s: State, data: Buffer): Promise<OptResult> {
  return metaContext(s, NbdOpt.LIST_META_CONTEXT, data, true);
}

async function handleOptSetMetaContext(s: State, data: Buffer): Promise<OptResult> {
  // The selection is replaced even when the request fails (spec).
  s.metaExport = undefined;
  s.metaIds = [];
  if (!s.structured) {
    decodeMetaContextRequest(data); // still validate lengths
    throw new InvalidOptionError('SET_META_CONTEXT requires STRUCTURED_REPLY first');
  }
  return metaContext(s, NbdOpt.SET_META_CONTEXT, data, false);
}

async function metaContext(s: State, option: number, data: Buffer, list: boolean): Promise<OptResult> {
  const req = decodeMetaContextRequest(data);
  const info = await findExport(s, option, req.name, () => s.io.provider.describe(req.name));
  if (!info) return undefined;
  const ids = matchContexts(req.queries, list);
  for (const id of ids) {
    const ctx = CONTEXTS.find((c) => c.id === id)!;
    s.io.send(encodeOptionReply(option, NbdRep.META_CONTEXT, encodeMetaContext(list ? 0 : id, ctx.name)));
  }
  if (!list) {
    s.metaExport = req.name;
    s.metaIds = ids;
  }
  reply(s, option, NbdRep.ACK);
  return undefined;
}

/** Dispatch table; options not listed (PEEK_EXPORT, unknown numbers) get ERR_UNSUP. */
const OPTION_HANDLERS: Readonly<Record<number, OptHandler>> = {
  [NbdOpt.EXPORT_NAME]: handleOptExportName,
  [NbdOpt.ABORT]: handleOptAbort,
  [NbdOpt.LIST]: handleOptList,
  [NbdOpt.STARTTLS]: handleOptStartTls,
  [NbdOpt.INFO]: handleOptInfo,
  [NbdOpt.GO]: handleOptGo,
  [NbdOpt.STRUCTURED_REPLY]: handleOptStructuredReply,
  [NbdOpt.LIST_META_CONTEXT]: handleOptListMetaContext,
  [NbdOpt.SET_META_CONTEXT]: handleOptSetMetaContext,
  [NbdOpt.EXTENDED_HEADERS]: handleOptExtendedHeaders,
};
