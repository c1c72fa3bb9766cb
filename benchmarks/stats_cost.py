"""What statistics cost: many short paired samples, with a confidence interval.

The main table compares medians of a few long repeats. On a shared 2-core VM
one sample can run 10% faster or slower than the next for reasons outside the
process, which hides a difference of a few percent. Here the two rows that
differ only by statistics (``offload`` and ``offload_nostats``) are sampled in
pairs, in A B B A order so that a drift in machine speed cancels within each
four samples, and the cost is the median of the per-pair ratios, with a
distribution-free 95% confidence interval for that median.

Run: ``python -m benchmarks --stats-cost [--pairs N]``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from .mechanisms import MECHANISMS
from .workloads import WORKLOADS

WORKLOAD_KEYS = ("throughput", "cpu")


def median_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """A confidence interval for the median, from order statistics (no assumed distribution).

    The number of values below the true median is Binomial(n, 1/2); the
    interval runs between the order statistics that leave out at most
    ``(1 - confidence) / 2`` of that distribution on each side.
    """
    ordered = sorted(values)
    n = len(ordered)
    tail = (1 - confidence) / 2
    below = 0.0
    low = 0
    for k in range(n):
        below += math.comb(n, k) / 2**n
        if below > tail:
            low = k
            break
    return ordered[max(0, low - 1)], ordered[min(n - 1, n - low)]


def measure_pairs(
    pairs: int, calls: int, sample: Callable[..., float], progress: Callable[[str], None]
) -> dict[str, dict[str, float | int]]:
    """Per workload: the median cost of statistics in percent, and its interval."""
    with_stats = next(m for m in MECHANISMS if m.key == "offload")
    without = next(m for m in MECHANISMS if m.key == "offload_nostats")
    found: dict[str, dict[str, float | int]] = {}
    for work in (w for w in WORKLOADS if w.key in WORKLOAD_KEYS):
        ratios: list[float] = []
        for number in range(pairs):
            order = (with_stats, without) if number % 2 == 0 else (without, with_stats)
            scores = {mech.key: sample(mech, work, calls) for mech in order}
            ratios.append(scores["offload"] / scores["offload_nostats"])
            if (number + 1) % 10 == 0:
                progress(f"  {work.key:<10} {number + 1}/{pairs} pairs")
        low, high = median_interval(ratios)
        found[work.key] = {
            "pairs": pairs,
            "calls": calls,
            "cost_pct": round(100 * (1 - statistics.median(ratios)), 2),
            # A lower throughput ratio is a higher cost: the bounds swap.
            "cost_pct_low": round(100 * (1 - high), 2),
            "cost_pct_high": round(100 * (1 - low), 2),
        }
    return found


def table(found: dict[str, dict[str, float | int]]) -> str:
    lines = ["workload     cost of statistics   95% interval       pairs"]
    for key, row in found.items():
        lines.append(
            f"{key:<12} {row['cost_pct']:>6.1f}% of calls/s   "
            f"{row['cost_pct_low']:>5.1f}% to {row['cost_pct_high']:>4.1f}%   {row['pairs']:>5}"
        )
    return "\n".join(lines)
