import math

import numpy as np
import pytest

from ppdeploy.bench.stats import ecdf, percentile, stage_means, summarize
from ppdeploy.core.errors import InputError


def test_percentiles_on_known_samples():
    data = [1.0, 2.0, 3.0, 4.0]
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile(data, 50) == 2.5  # halfway between the 2nd and 3rd ranks
    assert percentile(data, 25) == pytest.approx(1.75)
    # 1..100: p90 sits at rank 89.1 -> 90.1, p99 at 98.01 -> 99.01
    hundred = list(range(1, 101))
    assert percentile(hundred, 90) == pytest.approx(90.1)
    assert percentile(hundred, 99) == pytest.approx(99.01)
    # order of the input does not matter
    rng = np.random.default_rng(3)
    shuffled = rng.permutation(hundred)
    assert percentile(shuffled, 50) == pytest.approx(50.5)


def test_percentile_matches_numpy_linear():
    rng = np.random.default_rng(0)
    data = rng.lognormal(size=257)
    for q in (1, 50, 90, 99, 99.9):
        assert percentile(data, q) == pytest.approx(float(np.percentile(data, q)))


def test_single_sample_and_bad_input():
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(InputError):
        percentile([], 50)
    with pytest.raises(InputError):
        percentile([1.0, 2.0], 101)
    with pytest.raises(InputError):
        percentile([1.0, float("nan")], 50)
    with pytest.raises(InputError):
        summarize([])


def test_summary_fields():
    s = summarize([10.0, 20.0, 30.0, 40.0, 1000.0])
    assert s.count == 5
    assert s.min == 10.0 and s.max == 1000.0
    assert s.p50 == 30.0
    assert s.mean == pytest.approx(220.0)
    assert s.std == pytest.approx(np.std([10, 20, 30, 40, 1000], ddof=1))
    assert s.p50 <= s.p90 <= s.p99 <= s.max
    assert set(s.to_dict()) == {"count", "mean", "std", "min", "p50", "p90", "p99", "max"}


def test_stage_means_ignore_missing_stages():
    means = stage_means([{"pre": 1.0, "infer": 10.0}, {"pre": 3.0}, {"infer": float("nan")}])
    assert means == {"pre": 2.0, "infer": 10.0}


def test_ecdf():
    xs, ys = ecdf([3.0, 1.0, 2.0])
    assert xs.tolist() == [1.0, 2.0, 3.0]
    assert ys.tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert math.isclose(ys[-1], 1.0)
