"""The open-loop schedule follows the configured arrival process, and the generator only targets loopback."""
import math

import numpy as np
import pytest

from ppdeploy.bench.load import arrival_schedule, ensure_loopback
from ppdeploy.core.errors import InputError


def ks_statistic_exponential(gaps: np.ndarray, rate: float) -> float:
    """Kolmogorov-Smirnov distance between the gaps' empirical CDF and Exp(rate)."""
    x = np.sort(gaps)
    n = x.size
    cdf = 1.0 - np.exp(-rate * x)
    upper = np.arange(1, n + 1) / n - cdf
    lower = cdf - np.arange(0, n) / n
    return float(max(upper.max(), lower.max()))


def test_constant_arrivals_are_evenly_spaced():
    t = arrival_schedule(20.0, 2.0, "constant")
    assert t.size == 40
    assert t[0] == 0.0
    assert np.allclose(np.diff(t), 0.05)
    assert t[-1] < 2.0


def test_poisson_gaps_are_exponential_with_the_right_rate():
    rate, duration = 50.0, 200.0
    t = arrival_schedule(rate, duration, "poisson", seed=7)
    gaps = np.diff(np.concatenate([[0.0], t]))
    n = gaps.size
    # count within 4 sigma of rate*duration (Poisson: sigma = sqrt(mean))
    assert abs(n - rate * duration) < 4 * math.sqrt(rate * duration)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.05)
    # KS test at alpha = 0.01: critical value 1.63 / sqrt(n)
    assert ks_statistic_exponential(gaps, rate) < 1.63 / math.sqrt(n)
    # and the test can fail: the same gaps are far from an exponential of twice the rate
    assert ks_statistic_exponential(gaps, 2 * rate) > 1.63 / math.sqrt(n)
    # constant spacing is not exponential either
    const = np.diff(arrival_schedule(rate, duration, "constant"))
    assert ks_statistic_exponential(const, rate) > 1.63 / math.sqrt(const.size)


def test_poisson_schedule_is_seeded_sorted_and_bounded():
    a = arrival_schedule(30.0, 5.0, "poisson", seed=1)
    b = arrival_schedule(30.0, 5.0, "poisson", seed=1)
    c = arrival_schedule(30.0, 5.0, "poisson", seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.all(np.diff(a) > 0)
    assert a.min() > 0 and a.max() < 5.0
    assert arrival_schedule(1000.0, 10.0, "poisson", max_requests=25).size == 25
    assert arrival_schedule(1000.0, 10.0, "constant", max_requests=25).size == 25


def test_schedule_rejects_bad_parameters():
    for kwargs in ({"rate": 0, "duration_s": 1}, {"rate": -1, "duration_s": 1}, {"rate": 1, "duration_s": 0},
                   {"rate": float("inf"), "duration_s": 1}):
        with pytest.raises(InputError):
            arrival_schedule(**kwargs)
    with pytest.raises(InputError, match="distribution"):
        arrival_schedule(1, 1, "gamma")
    with pytest.raises(InputError):
        arrival_schedule(1, 1, max_requests=0)


def test_loopback_only_by_default():
    ensure_loopback("http://127.0.0.1:8000")
    ensure_loopback("http://localhost:8000/v2")
    ensure_loopback("http://[::1]:8000")
    with pytest.raises(InputError, match="loopback"):
        ensure_loopback("http://10.1.2.3:8000")
    ensure_loopback("http://10.1.2.3:8000", allow_remote=True)
    with pytest.raises(InputError, match="http"):
        ensure_loopback("ftp://127.0.0.1/")


def test_summary_counts_and_achieved_rate_over_the_arrival_period():
    from ppdeploy.bench.load import RequestRecord, summarize_records

    records = [
        RequestRecord(1.0, 1.0, 1.1, 200),
        RequestRecord(2.0, 2.0, 2.2, 200),
        RequestRecord(3.0, 3.0, 3.05, 429, "HTTP 429: queue full"),
        RequestRecord(3.5, 3.5, None, None, "ReadTimeout"),
        RequestRecord(3.9, None, None, None, "dropped: client in-flight cap reached"),
    ]
    r = summarize_records(records, rate=1.25, distribution="poisson", duration_s=4.0)
    assert (r.scheduled, r.sent, r.ok, r.http_429, r.failures, r.dropped) == (5, 4, 2, 1, 1, 1)
    assert r.achieved_rps == 0.5  # 2 ok over the 4 s period, not over 1.0..4.0
    assert r.latency_ms["min"] == pytest.approx(100.0) and r.latency_ms["max"] == pytest.approx(200.0)
    # a backlog that finishes after the period stretches the window instead of hiding
    late = summarize_records([RequestRecord(0.5, 0.5, 9.5, 200)], 1.0, "constant", 2.0)
    assert late.window_s == 9.5 and late.latency_ms["p50"] == pytest.approx(9000.0)
