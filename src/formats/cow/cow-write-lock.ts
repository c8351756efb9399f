/**
 * SectorWriteLock: the narrow lock that keeps read-modify-write of partial sectors from
 * losing concurrent writes. Reads never take it.
 *
 * A write covers sectors [first, end). Its *edge* sectors (the first and last, when the
 * write only partly covers them) are read-modify-written: the rest of the sector is
 * copied from the current view. Two writes conflict only when they overlap and some
 * overlapped sector is an edge of either one:
 *
 *   - edge vs anything: the RMW could copy stale bytes over the other write;
 *   - whole sector vs whole sector: no conflict (each byte ends up from one of them,
 *     which NBD allows for overlapping in-flight requests), so large aligned writes run
 *     fully in parallel.
 *
 * Grants are all-or-nothing and decided synchronously (Node is single-threaded), in
 * FIFO order among conflicting requests, so there is no hold-and-wait and no deadlock.
 * Cost: O(writes in flight) per write; no per-sector objects for aligned writes. The
 * common case — a whole-sector write while no partial-sector write is held or waiting —
 * is granted without scanning (it cannot conflict with anything held: conflicts need an
 * edge on one side), which keeps 4 KiB random writes at QD32 O(1).
 */

interface Claim {
  readonly first: number;
  readonly end: number;
  /** Partially covered sectors (0, 1 or 2 of them). */
  readonly edges: readonly number[];
  grant?: () => void;
}

export class SectorWriteLock {
  private readonly granted = new Set<Claim>();
  private readonly waiting: Claim[] = [];
  /** Granted claims with at least one partial edge sector. */
  private grantedWithEdges = 0;

  /** Run `fn` while holding sectors [first, end) with the given partial edges. */
  async run<T>(first: number, end: number, edges: readonly number[], fn: () => Promise<T>): Promise<T> {
    const claim: Claim = { first, end, edges };
    if (this.waiting.length === 0 && !this.conflictsWithAnyGranted(claim)) {
      this.grant(claim);
    } else {
      await new Promise<void>((resolve) => {
        claim.grant = resolve;
        this.waiting.push(claim);
      });
    }
    try {
      return await fn();
    } finally {
      this.granted.delete(claim);
      if (claim.edges.length > 0) this.grantedWithEdges--;
      if (this.waiting.length > 0) this.wake();
    }
  }

  /**
   * A whole-sector write could be granted at once and would release before anything else
   * runs (it does no await): nothing partial is held or waiting, so nothing can conflict.
   */
  get wholeSectorsFree(): boolean {
    return this.waiting.length === 0 && this.grantedWithEdges === 0;
  }

  /** Number of held claims (for tests). */
  get held(): number {
    return this.granted.size;
  }

  private wake(): void {
    // Grant every waiter that conflicts neither with a granted claim nor with an earlier
    // waiter that is still blocked (FIFO among conflicting requests).
    const blocked: Claim[] = [];
    for (let i = 0; i < this.waiting.length; ) {
      const c = this.waiting[i]!;
      if (!this.conflictsWithAny(c, this.granted) && !this.conflictsWithAny(c, blocked)) {
        this.waiting.splice(i, 1);
        this.grant(c);
        c.grant!();
      } else {
        blocked.push(c);
        i++;
      }
    }
  }

  private grant(c: Claim): void {
    this.granted.add(c);
    if (c.edges.length > 0) this.grantedWithEdges++;
  }

  /** Like conflictsWithAny(c, granted), skipped when neither side can have an edge. */
  private conflictsWithAnyGranted(c: Claim): boolean {
    if (c.edges.length === 0 && this.grantedWithEdges === 0) return false;
    return this.conflictsWithAny(c, this.granted);
  }

  private conflictsWithAny(c: Claim, others: Iterable<Claim>): boolean {
    for (const o of others) if (conflicts(c, o)) return true;
    return false;
  }
}

function conflicts(a: Claim, b: Claim): boolean {
  if (a.edges.length === 0 && b.edges.length === 0) return false;
  const lo = Math.max(a.first, b.first);
  const hi = Math.min(a.end, b.end);
  if (lo >= hi) return false;
  const inOverlap = (s: number): boolean => s >= lo && s < hi;
  return a.edges.some(inOverlap) || b.edges.some(inOverlap);
}
