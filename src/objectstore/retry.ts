/**
 * The retry policy of every object-store operation, in one place (docs/object-store.md,
 * "Faults and retries"):
 *
 *   operation ── attempt 1 ──✗ sleep(full jitter) ── attempt 2 ──✗ … ── attempt N ── EIO
 *               └ per-attempt timer (abort) ┘                          └ overall deadline ┘
 *
 *   - An attempt is the WHOLE operation: status, headers, body, length and the caller's
 *     check of the bytes (a chunk's SHA-256). A reset mid-body, a short body or a flipped
 *     bit are retried like a 503 — the SDK's own retries end when the headers arrive.
 *   - Each attempt is watched (AttemptWatch): no answer within `attemptMs`, no body byte for
 *     `attemptMs`, or a body still below `minBytesPerSecond` on average after `attemptMs`
 *     aborts it. A store that never answers, stalls or trickles costs one attempt, not the
 *     whole deadline — while a body that flows, however slowly a loaded store serves many
 *     parallel GETs, is never cut (cutting it would retry into the same overload).
 *   - Backoff: "full jitter" (a random delay in [0, min(cap, base·2^k)]), so many readers
 *     that failed together do not come back together. No sleep passes the deadline.
 *   - Permanent answers are not retried: 4xx except 408/429 (403 stays 403 however often
 *     it is asked), and 404 unless the caller knows the object exists (a chunk a manifest
 *     names: a 404 there is a store glitch).
 *
 * Pure policy: no SDK types, no module state; the caller supplies `run(signal)`.
 */

export interface RetryPolicy {
  /** Attempts in all (1 = no retry). */
  readonly maxAttempts: number;
  /** Bound of one attempt (request, headers and body). */
  readonly attemptMs: number;
  /** Bound of the whole operation including sleeps. */
  readonly deadlineMs: number;
  /** Floor of a body's average rate, judged after `attemptMs` of body (default 64 KiB/s). */
  readonly minBytesPerSecond?: number;
  readonly baseDelayMs?: number;
  readonly maxDelayMs?: number;
}

/** What an attempt tells its watch, and how the watch stops it. */
export interface Attempt {
  /** Aborts when the watch or the deadline gives up on this attempt. */
  readonly signal: AbortSignal;
  /** The response headers arrived (`n` = 0) or `n` more body bytes did. */
  progress(n: number): void;
}

/** A response that arrived but is wrong (length, hash): retried like a network fault. */
export class BadResponseError extends Error {
  override name = 'BadResponseError';
}

/** The per-attempt timer fired. */
export class AttemptTimeoutError extends Error {
  override name = 'AttemptTimeoutError';
}

/** Every attempt failed, or the deadline passed: `cause` is the last attempt's error. */
export class RetriesExhaustedError extends Error {
  override name = 'RetriesExhaustedError';
  constructor(
    message: string,
    readonly attempts: number,
    readonly last: unknown,
  ) {
    super(message, { cause: last });
  }
}

export interface RetryHooks {
  /** 404 is retried too (the object is known to exist). */
  readonly retryNotFound?: boolean;
  /** Called before each sleep: attempt number (1-based) that failed, its error, the delay. */
  readonly onRetry?: (attempt: number, err: unknown, delayMs: number) => void;
}

/** HTTP status of an SDK error (read structurally: the SDK module may not be loaded). */
export function httpStatusOf(err: unknown): number | undefined {
  return (err as { $metadata?: { httpStatusCode?: number } } | undefined)?.$metadata?.httpStatusCode;
}

export function isNotFound(err: unknown): boolean {
  const name = (err as Error | undefined)?.name;
  return httpStatusOf(err) === 404 || name === 'NoSuchKey' || name === 'NotFound';
}

/** Whether another attempt may give a different answer. */
export function isRetryable(err: unknown, retryNotFound = false): boolean {
  if (isNotFound(err)) return retryNotFound;
  const status = httpStatusOf(err);
  if (status !== undefined && status >= 400 && status < 500) return status === 408 || status === 429;
  // 5xx, a 2xx whose body was bad, and every network fault (no status at all).
  return true;
}

export function backoffMs(failedAttempts: number, base: number, cap: number, random: () => number = Math.random): number {
  return Math.floor(random() * Math.min(cap, base * 2 ** Math.max(0, failedAttempts - 1)));
}

/**
 * Watches one attempt (see the top of this file) and aborts `signal` with the reason.
 * A periodic check rather than re-armed timers: progress() is called for every body
 * piece (tens per chunk), and must stay cheap.
 */
class AttemptWatch implements Attempt {
  private readonly ctl = new AbortController();
  readonly signal = this.ctl.signal;
  private readonly started = Date.now();
  private bodyStarted: number | undefined;
  private lastProgress = this.started;
  private bytes = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly attemptMs: number,
    private readonly minRate: number,
    deadlineAt: number,
  ) {
    const every = Math.max(20, Math.min(250, Math.floor(attemptMs / 4)));
    this.timer = setInterval(() => this.check(deadlineAt), every);
  }

  progress(n: number): void {
    const now = Date.now();
    this.bodyStarted ??= now;
    this.lastProgress = now;
    this.bytes += n;
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private check(deadlineAt: number): void {
    const now = Date.now();
    let why: string | undefined;
    if (now >= deadlineAt) why = 'the operation\'s deadline passed';
    else if (this.bodyStarted === undefined) {
      if (now - this.started >= this.attemptMs) why = `no answer within ${this.attemptMs} ms`;
    } else if (now - this.lastProgress >= this.attemptMs) why = `no body bytes for ${this.attemptMs} ms`;
    else if (now - this.bodyStarted >= this.attemptMs) {
      const rate = this.bytes / ((now - this.bodyStarted) / 1000);
      if (rate < this.minRate) why = `body arriving at ${Math.round(rate)} B/s, below the floor of ${this.minRate} B/s`;
    }
    if (why === undefined) return;
    this.stop();
    this.ctl.abort(new AttemptTimeoutError(why));
  }
}

/**
 * Run `run(attempt)` until it succeeds, fails permanently, runs out of attempts, or the
 * deadline passes. `attempt.signal` aborts when the watch or the deadline gives up; `run`
 * must stop (and release what it holds) when it does.
 */
export async function withRetries<T>(policy: RetryPolicy, run: (attempt: Attempt) => Promise<T>, hooks: RetryHooks = {}): Promise<T> {
  const base = policy.baseDelayMs ?? 100;
  const cap = policy.maxDelayMs ?? 2000;
  const minRate = policy.minBytesPerSecond ?? 64 * 1024;
  const deadlineAt = Date.now() + policy.deadlineMs;
  let last: unknown;
  let attempt = 0;
  while (attempt < Math.max(1, policy.maxAttempts)) {
    if (deadlineAt - Date.now() <= 0) break;
    attempt++;
    const watch = new AttemptWatch(policy.attemptMs, minRate, deadlineAt);
    try {
      return await run(watch);
    } catch (err) {
      // An abort surfaces as the SDK's AbortError; the reason says what really happened.
      last = watch.signal.aborted ? watch.signal.reason : err;
      if (!isRetryable(last, hooks.retryNotFound)) throw last;
    } finally {
      watch.stop();
    }
    if (attempt >= policy.maxAttempts) break;
    const delay = Math.min(backoffMs(attempt, base, cap), Math.max(0, deadlineAt - Date.now()));
    hooks.onRetry?.(attempt, last, delay);
    if (delay > 0) await new Promise((r) => setTimeout(r, delay));
  }
  const why = last === undefined ? 'deadline passed' : (last as Error).message;
  throw new RetriesExhaustedError(`gave up after ${attempt} attempt(s) in ${policy.deadlineMs} ms or less: ${why}`, attempt, last);
}
