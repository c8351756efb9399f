// The "modern" benchmark mode (scripts/bench.sh modern, issue 27): the same table as the
// throughput mode, but the CLIENTS are today's (fio 3.39 and nbdcopy from libnbd 1.22, out of
// the cached Debian trixie root, docs/modern-clients.md) so they ask for extended headers, and
// the PEERS are that root's servers too (qemu-nbd 10, which grants extended headers, and
// nbdkit 1.42, which does not), next to cownbd on the host.
//
// Everything a tool in the root touches must be under /tmp: scripts/modern-run.sh binds /tmp
// (and $TMPDIR) at the same path inside its read-only chroot and nothing else of the host. So
// the run directory lives under os.tmpdir() and the base is hard-linked into it (same inode:
// bench.sh's "base unchanged" check still holds; a copy when /tmp is another filesystem).
//
// Which protocol each server gives these clients is probed once per target with the root's
// `nbdinfo --json` ("extended": true/false): fio's nbd engine and nbdcopy link the same
// libnbd 1.22, which asks for extended headers first (NBD_OPT_EXTENDED_HEADERS) by default.
import { copyFileSync, linkSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const RUNNER = join(dirname(fileURLToPath(import.meta.url)), '..', 'modern-run.sh');
/** argv → the same command run from the trixie root (modern-run.sh execs through to it). */
export const viaRoot = (argv) => ['bash', RUNNER, ...argv];

export const MODERN_TARGETS = ['cownbd-cow', 'cownbd-addcow', 'trixie-nbdkit-cow64k', 'trixie-qemu-threads'];
export const MODERN_ROWS = ['randread-4k-qd32', 'seqread-1m-qd8', 'randwrite-4k-qd32', 'seqwrite-1m-qd8', 'nbdcopy-null', 'nbdcopy-devnull-sync'];

/** A run directory under /tmp with the base linked into it; returns { runDir, base }. */
export function modernRunDir(base) {
  const runDir = mkdtempSync(join(tmpdir(), 'cownbd-bench-modern.'));
  const inside = join(runDir, 'base.img');
  try {
    linkSync(base, inside);
  } catch {
    copyFileSync(base, inside); // /tmp on another filesystem (tmpfs)
  }
  return { runDir, base: inside };
}

/**
 * What the root's libnbd negotiates with a server: { extended, structured, version } from
 * `nbdinfo --json` (null fields when nbdinfo failed, with its last stderr line as `error`).
 */
export function probeProtocol(uri) {
  const [cmd, ...args] = viaRoot(['nbdinfo', '--json', '--no-content', uri]);
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 30_000 });
  try {
    const j = JSON.parse(r.stdout);
    return { extended: j.extended === true, structured: j.structured === true };
  } catch {
    return { extended: null, structured: null, error: (r.stderr || `rc ${r.status}`).trim().split('\n').pop() };
  }
}

/** The root's tool versions, for the table header. */
export function clientVersions() {
  const first = (argv) => {
    const [cmd, ...args] = viaRoot(argv);
    return (spawnSync(cmd, args, { encoding: 'utf8' }).stdout ?? '').trim().split('\n')[0];
  };
  return { fio: first(['fio', '--version']), nbdcopy: first(['nbdcopy', '--version']), qemuNbd: first(['qemu-nbd', '--version']), nbdkit: first(['nbdkit', '--version']) };
}

/** The header lines: client versions and, per target, what the clients negotiated. */
export function protocolNotes(versions, probes) {
  const yes = (p) => (p.extended === null ? `probe failed: ${p.error}` : p.extended ? 'extended headers' : p.structured ? 'structured replies (no extended headers)' : 'simple replies');
  return [
    `clients from the trixie root: ${versions.fio}, ${versions.nbdcopy} (peers: ${versions.qemuNbd}; ${versions.nbdkit})`,
    'negotiated by these clients (libnbd 1.22, probed with the root\'s nbdinfo --json):',
    ...Object.entries(probes).map(([t, p]) => `  ${t.padEnd(22)} ${yes(p)}`),
  ];
}
