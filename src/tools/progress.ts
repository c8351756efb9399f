/**
 * A tiny progress bar for long copies: drawn on stderr, only when stderr is a TTY and the
 * caller did not ask for --quiet or --json (scripts never see control characters).
 * Redraws at most every 100 ms; `finish()` clears the line.
 *
 *   commit vm.cow  [##########..........]  51.2%  512 MiB / 1 GiB  88.1 MiB/s
 */
import { formatSize } from '../util/size.js';

const WIDTH = 24;
const REDRAW_MS = 100;

export interface ProgressSink {
  /** `done` bytes of `total` processed so far. */
  update(done: number): void;
  finish(): void;
}

export class Progress implements ProgressSink {
  private last = 0;
  private readonly started = Date.now();
  private drawn = false;

  constructor(
    private readonly label: string,
    private readonly total: number,
    private readonly stream: NodeJS.WriteStream = process.stderr,
  ) {}

  update(done: number): void {
    const now = Date.now();
    if (now - this.last < REDRAW_MS && done < this.total) return;
    this.last = now;
    const frac = this.total > 0 ? Math.min(1, done / this.total) : 1;
    const filled = Math.round(frac * WIDTH);
    const secs = Math.max(0.001, (now - this.started) / 1000);
    const line =
      `${this.label}  [${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}]  ${(frac * 100).toFixed(1).padStart(5)}%  ` +
      `${formatSize(done)} / ${formatSize(this.total)}  ${formatSize(Math.round(done / secs))}/s`;
    const cols = this.stream.columns ?? 100;
    this.stream.write(`\r${line.slice(0, cols - 1)}\x1b[K`);
    this.drawn = true;
  }

  finish(): void {
    if (this.drawn) this.stream.write('\r\x1b[K');
  }
}

const SILENT: ProgressSink = { update: () => {}, finish: () => {} };

/** A bar on a TTY unless quiet; otherwise a sink that does nothing. */
export function makeProgress(label: string, total: number, quiet: boolean): ProgressSink {
  if (quiet || !process.stderr.isTTY) return SILENT;
  return new Progress(label, total);
}
