"""Rates of sampled cumulative series (teststack/series.py), shared by chaos and load."""

from __future__ import annotations

import pytest

from teststack.series import interpolate, rate_series, window_rate


def test_rate_series_skips_gaps_and_never_goes_negative() -> None:
    ts = [0.0, 1.0, 2.0, 3.0, 4.0]
    t, r = rate_series(ts, [0, 100, None, 300, 250], span=1.0)
    assert t == [0.5, 2.0, 3.5]  # the missing sample is skipped
    assert r == [100, 100, 0.0]  # a counter reset reads as 0, not negative


def test_window_rate_interpolates_the_edges() -> None:
    ts = [0.0, 2.0, 4.0]
    vals = [0.0, 200.0, 600.0]
    assert interpolate(ts, vals, 1.0) == 100
    assert interpolate(ts, vals, 5.0) is None
    assert window_rate(ts, vals, (1.0, 3.0)) == pytest.approx(150)
