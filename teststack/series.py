"""Arithmetic on sampled cumulative series (flows produced, rows stored, counters).

Batches arrive in steps, so rates are taken over a sliding span, or between two instants
interpolated linearly between samples.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence


def rate_series(ts: Sequence[float], values: Sequence[float | None], span: float = 2.0
                ) -> tuple[list[float], list[float]]:
    """Per-second rate of a cumulative series over a sliding ``span`` (points at the middle
    of each span; samples whose value is None are skipped; never negative)."""
    pts = [(t, float(v)) for t, v in zip(ts, values, strict=True) if v is not None]
    out_t: list[float] = []
    out_r: list[float] = []
    j = 0
    for i in range(1, len(pts)):
        while pts[i][0] - pts[j][0] > span and j < i - 1:
            j += 1
        (t0, v0), (t1, v1) = pts[j], pts[i]
        if t1 > t0:
            out_t.append((t0 + t1) / 2)
            out_r.append(max(0.0, (v1 - v0) / (t1 - t0)))
    return out_t, out_r


def interpolate(ts: Sequence[float], values: Sequence[float | None], t: float) -> float | None:
    """The series at time ``t``, linear between samples (None outside them)."""
    pts = [(a, float(v)) for a, v in zip(ts, values, strict=True) if v is not None]
    if not pts or t < pts[0][0] or t > pts[-1][0]:
        return None
    for (ta, ra), (tb, rb) in itertools.pairwise(pts):
        if ta <= t <= tb:
            return ra if tb == ta else ra + (rb - ra) * (t - ta) / (tb - ta)
    return pts[-1][1]


def window_rate(ts: Sequence[float], values: Sequence[float | None],
                window: tuple[float, float]) -> float | None:
    """Mean rate over ``window`` from the interpolated values at its edges."""
    a, b = interpolate(ts, values, window[0]), interpolate(ts, values, window[1])
    if a is None or b is None:
        return None
    return (b - a) / (window[1] - window[0])
