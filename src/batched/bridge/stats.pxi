# Statistics snapshots of the core, as dicts (included by _core.pyx). The keys
# are spelled here only: batched._stats reads them by its field names.


cdef dict _snapshot(const CBatchStats& s, object latency_bounds_s):
    """A snapshot as a dict with the names of BatchProcessorStats' fields,
    plus "total_run_s" (for the average run time) and, with
    ``latency_bounds_s`` (ascending upper bounds in seconds), "queue_wait"
    and "batch_latency" as (cumulative counts per bound, sum in seconds,
    count): the histograms for exporters. A duration counts under the first
    bound at or above its bucket's upper end, so a count may land one bound
    late (buckets are 1/8 of a power of two)."""
    cdef size_t n
    cdef int r
    sizes = {}
    for n in range(s.batch_sizes.size()):
        if s.batch_sizes[n]:
            sizes[n] = s.batch_sizes[n]
    reasons = {}
    for r in range(<int>kDispatchReasonCount):
        reasons[reason_name(<CDispatchReason>r).decode()] = s.batches_by_reason[r]
    out = {
        "queue_size": s.queued_items,
        "total_processed": s.total_processed,
        "total_batches": s.total_batches,
        "failed_batches": s.failed_batches,
        "failed_items": s.failed_items,
        "rejected_items": s.rejected_items,
        "cancelled_items": s.cancelled_items,
        "expired_items": s.expired_items,
        "oldest_wait_ms": s.oldest_wait_ns / 1e6,
        "total_run_s": s.total_run_ns / 1e9,
        "queue_wait_ms": tuple([s.queue_wait.quantile(q) / 1e6 for q in (0.5, 0.95, 0.99)]),
        "batch_latency_ms": tuple([s.batch_latency.quantile(q) / 1e6 for q in (0.5, 0.95, 0.99)]),
        "batch_size_histogram": sizes,
        "batches_by_reason": reasons,
        "split_batches": s.split_batches,
        "batch_cap": s.batch_cap,
        # (the fields of batched._stats.Learned, in order)
        "learned": (s.cost_fixed_ns / 1e6, s.cost_per_item_ns / 1e6, s.cost_samples, s.arrival_per_s,
                    s.start_followers, s.adaptive_enough, s.adaptive_wait_ns / 1e6),
    }
    if latency_bounds_s is not None:
        out["queue_wait"] = _rebucket(s.queue_wait, latency_bounds_s)
        out["batch_latency"] = _rebucket(s.batch_latency, latency_bounds_s)
    return out


def empty_stats(latency_bounds_s=None):
    """The snapshot of a processor that has done nothing yet."""
    cdef CBatchStats nothing
    return _snapshot(nothing, latency_bounds_s)


_histogram_bounds_s = None


def histogram_bounds_s():
    """The upper bounds (seconds) of the core's latency histogram buckets:
    stats() at these bounds keeps everything the histograms know."""
    global _histogram_bounds_s
    if _histogram_bounds_s is None:
        _histogram_bounds_s = tuple(CLatencyHistogram.upper_bound(b) / 1e9 for b in range(kHistogramBuckets))
    return _histogram_bounds_s


def counts_at_bounds(cumulative, bounds_s):
    """Cumulative counts at ``bounds_s`` (ascending, seconds), from the
    cumulative counts at each of histogram_bounds_s(): a duration counts under
    the first bound at or above the upper end of its core bucket."""
    fine = histogram_bounds_s()
    cdef Py_ssize_t i = 0, n = len(fine)
    seen = 0
    out = []
    for bound in bounds_s:
        while i < n and fine[i] <= bound:
            seen = cumulative[i]
            i += 1
        out.append(seen)
    return out


cdef tuple _rebucket(const CLatencyHistogram& h, bounds_s):
    """(cumulative counts at each bound, sum in seconds, count) of ``h``."""
    cdef size_t b
    cdef uint64_t seen = 0
    cumulative = []
    for b in range(kHistogramBuckets):
        seen += h.count_at(b)
        cumulative.append(seen)
    return counts_at_bounds(cumulative, bounds_s), h.sum_ns() / 1e9, h.count()
