"""How the benchmarks summarise: percentiles, ratios to a baseline, verdicts and tables."""
from __future__ import annotations

import statistics


def percentile(sorted_values: list[float], q: float) -> float:
    """The value at rank q·(n−1), rounded, of an ascending list; NaN for an empty one."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[index]


def ratio(value: float, baseline: float) -> float:
    """value / baseline, 0 when the baseline measured nothing."""
    return value / baseline if baseline else 0.0


def spread(values: list[float], fmt: str = ",.0f", unit: str = "") -> str:
    """"median (min–max)" of a figure measured in several rounds; one value alone as it is."""
    if not values:
        return "–"
    median = f"{statistics.median(values):{fmt}}{unit}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):{fmt}}–{max(values):{fmt}})"


def met(ok: bool) -> str:
    """The verdict beside a target in a summary line."""
    return "met" if ok else "MISSED"


def mark(ok: bool) -> str:
    """The verdict beside a target in a table cell."""
    return "ok" if ok else "MISS"


def table(header: list[str], rows: list[list[str]]) -> str:
    """Left-aligned columns under a header and a rule, two spaces apart."""
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)
