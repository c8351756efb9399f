/**
 * The retry policy (src/objectstore/retry.ts) on its own: which answers are retried, the
 * jittered backoff's bounds, and that a stalled attempt is abandoned by its watch while a
 * flowing one is not. The same policy end to end: test/objectstore/store-faults.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { AttemptTimeoutError, backoffMs, isRetryable, RetriesExhaustedError, withRetries } from '../../src/objectstore/retry.js';

const status = (s: number) => Object.assign(new Error(`HTTP ${s}`), { $metadata: { httpStatusCode: s } });

describe('object-store retry policy', () => {
  it('retries 5xx, 408, 429 and network faults; not 403/400; 404 only when the object must exist', () => {
    for (const s of [500, 502, 503, 408, 429]) expect(isRetryable(status(s)), `${s}`).toBe(true);
    for (const s of [400, 401, 403]) expect(isRetryable(status(s)), `${s}`).toBe(false);
    expect(isRetryable(status(404))).toBe(false);
    expect(isRetryable(status(404), true)).toBe(true);
    expect(isRetryable(Object.assign(new Error('reset'), { code: 'ECONNRESET' }))).toBe(true);
  });

  it('backoff is full jitter: within [0, min(cap, base·2^(n-1))]', () => {
    expect(backoffMs(1, 100, 2000, () => 0.999)).toBe(99);
    expect(backoffMs(3, 100, 2000, () => 0.999)).toBe(399);
    expect(backoffMs(10, 100, 2000, () => 0.999)).toBe(1998);
    expect(backoffMs(5, 100, 2000, () => 0)).toBe(0);
  });

  it('a stalled attempt is abandoned after attemptMs and retried; a permanent error is thrown at once', async () => {
    let calls = 0;
    const started = Date.now();
    const out = await withRetries({ maxAttempts: 3, attemptMs: 200, deadlineMs: 5000, baseDelayMs: 1 }, (a) => {
      calls++;
      if (calls === 1) return new Promise<string>((_, reject) => a.signal.addEventListener('abort', () => reject(a.signal.reason as Error)));
      return Promise.resolve('ok');
    });
    expect(out).toBe('ok');
    expect(calls).toBe(2);
    expect(Date.now() - started).toBeLessThan(2000);
    let permanent = 0;
    await expect(withRetries({ maxAttempts: 5, attemptMs: 200, deadlineMs: 5000 }, () => (permanent++, Promise.reject(status(403))))).rejects.toThrow('HTTP 403');
    expect(permanent).toBe(1);
  });

  it('a body that keeps flowing above the floor is not cut; one below it is', async () => {
    const flow = (rate: number, ms: number) =>
      withRetries({ maxAttempts: 1, attemptMs: 100, deadlineMs: 5000, minBytesPerSecond: 64 * 1024 }, async (a) => {
        a.progress(0);
        const end = Date.now() + ms;
        while (Date.now() < end) {
          if (a.signal.aborted) throw a.signal.reason as Error;
          a.progress(rate / 50);
          await new Promise((r) => setTimeout(r, 20));
        }
        if (a.signal.aborted) throw a.signal.reason as Error;
        return 'done';
      });
    await expect(flow(1024 * 1024, 400)).resolves.toBe('done');
    const err = await flow(16 * 1024, 400).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RetriesExhaustedError);
    expect((err as RetriesExhaustedError).last).toBeInstanceOf(AttemptTimeoutError);
    expect(String((err as Error).message)).toMatch(/below the floor/);
  });
});
