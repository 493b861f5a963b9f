"""Recent latency, as people read it: percentiles in milliseconds over the last few hundred samples (a
worker's own, in its PONG; a client's per worker, in `ServiceClient.workers()`)."""

from __future__ import annotations

from collections.abc import Collection

#: Samples kept (the most recent ones): enough for a p99, little to sort at each report.
LATENCY_SAMPLES = 256


def percentile_ms(samples: Collection[float], fraction: float) -> float | None:
    """The `fraction` quantile (nearest rank) of `samples` (seconds), in ms rounded to µs; None for none."""
    if not samples:
        return None
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 3)


def latency_summary(samples: Collection[float]) -> dict[str, float | int | None]:
    """`{"p50": ms, "p99": ms, "samples": n}` (docs/protocol.md §4, PONG `latency_ms`)."""
    return {"p50": percentile_ms(samples, 0.5), "p99": percentile_ms(samples, 0.99), "samples": len(samples)}
