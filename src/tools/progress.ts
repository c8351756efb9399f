/**
 * Progress bars for long copies (commit, convert, rebase), drawn by cli-progress on stderr:
 *
 *   convert vm.cow  [██████████░░░░░░░░░░░░]  45.1%  461 MiB / 1 GiB  88.1 MiB/s  ETA 6s
 *   (ASCII `#` and `-` when stderr is not a terminal)
 *
 * The bar takes whatever the terminal width leaves after the text. When it is drawn
 * follows qemu-img: on a terminal by default; `-p` forces it even when stderr is a pipe
 * or a file (cli-progress then writes a fresh line every 2 s instead of redrawing); `-q`
 * (and --json) silence it. Scripts that pass neither never see control characters.
 */
import cliProgress from 'cli-progress';
import { formatSize } from '../util/size.js';

export interface ProgressSink {
  /** `done` bytes of `total` processed so far. */
  update(done: number): void;
  finish(): void;
}

/** auto: a bar when stderr is a terminal; force: always (-p); off: never (-q, --json). */
export type ProgressMode = 'auto' | 'force' | 'off';

const SILENT: ProgressSink = { update: () => {}, finish: () => {} };

function formatEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--';
  if (seconds < 60) return `${Math.round(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${String(Math.round(seconds % 60)).padStart(2, '0')}s`;
  return `${Math.floor(seconds / 3600)}h${String(Math.floor((seconds % 3600) / 60)).padStart(2, '0')}m`;
}

/** One bar line for `width` columns (exported for tests). */
export function progressLine(label: string, done: number, total: number, elapsedMs: number, etaSeconds: number, width: number, ascii = false): string {
  const frac = total > 0 ? Math.min(1, done / total) : 1;
  const rate = done / Math.max(0.001, elapsedMs / 1000);
  const tail = `  ${(frac * 100).toFixed(1).padStart(5)}%  ${formatSize(done)} / ${formatSize(total)}  ${formatSize(Math.round(rate))}/s  ETA ${formatEta(etaSeconds)}`;
  const barWidth = Math.min(60, width - label.length - tail.length - 5);
  // A narrow terminal keeps the numbers and loses the bar.
  if (barWidth < 8) return `${label}${tail}`.slice(0, Math.max(20, width - 1));
  const filled = Math.round(frac * barWidth);
  const [full, empty] = ascii ? ['#', '-'] : ['█', '░'];
  return `${label}  [${full.repeat(filled)}${empty.repeat(barWidth - filled)}]${tail}`;
}

export function makeProgress(label: string, total: number, mode: ProgressMode | boolean, stream: NodeJS.WriteStream = process.stderr): ProgressSink {
  // (A boolean is the older "quiet" flag.)
  const m: ProgressMode = mode === true ? 'off' : mode === false ? 'auto' : mode;
  if (m === 'off' || (m === 'auto' && !stream.isTTY)) return SILENT;
  const bar = new cliProgress.SingleBar({
    stream,
    noTTYOutput: m === 'force',
    notTTYSchedule: 2000,
    fps: 10,
    hideCursor: false,
    clearOnComplete: Boolean(stream.isTTY),
    // Log files and CI consoles get plain ASCII; terminals the block characters.
    format: (_options, params) => progressLine(label, params.value, params.total, Date.now() - params.startTime, params.eta, stream.columns || 100, !stream.isTTY),
  });
  bar.start(Math.max(1, total), 0);
  return {
    update: (done) => bar.update(Math.min(done, Math.max(1, total))),
    finish: () => bar.stop(),
  };
}
