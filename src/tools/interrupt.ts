/**
 * SIGINT handling for long operations. The first Ctrl-C only sets a flag; loops poll
 * `check()` between chunks (a safe point: no write in flight, nothing half-recorded) and
 * unwind with InterruptedError, so every file is left consistent. A second Ctrl-C while
 * the operation is still cleaning up is ignored (we are already stopping as fast as is safe).
 */
import { InterruptedError } from './errors.js';

export class Interrupt {
  private requested = false;
  private readonly onSignal = (): void => {
    if (!this.requested) process.stderr.write('\ncownbd: interrupt received, stopping at the next safe point...\n');
    this.requested = true;
  };

  constructor(private readonly describeState: () => string = () => 'nothing was left half-written') {}

  install(): this {
    process.on('SIGINT', this.onSignal);
    return this;
  }

  uninstall(): void {
    process.off('SIGINT', this.onSignal);
  }

  get isRequested(): boolean {
    return this.requested;
  }

  /** Throw InterruptedError if SIGINT arrived. Call only at safe points. */
  check(): void {
    if (this.requested) throw new InterruptedError(this.describeState());
  }

  /** Run `fn` with the handler installed. */
  static async run<T>(describeState: () => string, fn: (intr: Interrupt) => Promise<T>): Promise<T> {
    const intr = new Interrupt(describeState).install();
    try {
      return await fn(intr);
    } finally {
      intr.uninstall();
    }
  }
}
