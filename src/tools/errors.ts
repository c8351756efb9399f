/**
 * Errors and exit codes of the image tool (qemu-img conventions):
 *   0 success / clean, 1 error (message names file, field, value), 2 corruption found (check),
 *   3 leaks or cosmetic issues only (check), 130 interrupted by SIGINT (a safe state was kept).
 */
export const EXIT_OK = 0;
export const EXIT_ERROR = 1;
export const EXIT_CORRUPT = 2;
export const EXIT_LEAKS = 3;
/** check: the format has no metadata to check (qemu-img's exit status for that case). */
export const EXIT_NO_METADATA = 63;
export const EXIT_INTERRUPTED = 130;

/** A user-facing failure: the message is printed as-is, the command exits 1. */
export class ToolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ToolError';
  }
}

/** SIGINT arrived; the operation stopped at a safe point. `state` says what was left behind. */
export class InterruptedError extends Error {
  constructor(readonly state: string) {
    super(`interrupted: ${state}`);
    this.name = 'InterruptedError';
  }
}
