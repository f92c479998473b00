"""ppdeploy.serve.merge: one runner call for several requests, split back, a failing request run alone."""
from __future__ import annotations

import numpy as np
import pytest

from ppdeploy.serve.merge import (
    NotSplittable,
    merge_feeds,
    rows_of,
    run_merged,
    split_outputs,
)


class AddOne:
    """y = x + 1; fails on any negative input, as a backend failing on one request would."""

    def __init__(self):
        self.calls: list[int] = []

    def __call__(self, feeds):
        x = feeds["x"]
        self.calls.append(x.shape[0])
        if (x < 0).any():
            raise RuntimeError("negative input")
        return {"y": x + 1}


def requests(*rows):
    return [{"x": np.full((n, 3), n, np.float32)} for n in rows]


def test_merge_and_split():
    reqs = requests(1, 2, 3)
    merged = merge_feeds(reqs)
    assert merged["x"].shape == (6, 3) and rows_of(reqs[2]) == 3
    parts = split_outputs({"y": merged["x"] * 2}, [1, 2, 3])
    for n, part in zip((1, 2, 3), parts):
        np.testing.assert_array_equal(part["y"], np.full((n, 3), 2 * n))
    with pytest.raises(NotSplittable, match="6 rows"):
        split_outputs({"y": np.zeros((5, 3))}, [1, 2, 3])
    assert split_outputs({"y": np.zeros(())}, [4])[0]["y"].shape == ()  # one request: as it is


def test_merge_pads_the_named_axes():
    a, b = np.ones((1, 2), np.float32), np.ones((2, 4), np.float32)
    merged = merge_feeds([{"x": a}, {"x": b}], pad={"x": (1,)})["x"]
    assert merged.shape == (3, 4) and merged[0].tolist() == [1, 1, 0, 0]


def test_one_call_for_all_requests():
    infer = AddOne()
    outcomes = run_merged(infer, requests(1, 2, 3), after=lambda: "timings")
    assert infer.calls == [6]
    assert {id(o.run) for o in outcomes} == {id(outcomes[0].run)}
    run = outcomes[0].run
    assert run.members == (0, 1, 2) and run.rows == 6 and run.info == "timings"
    for n, o in zip((1, 2, 3), outcomes):
        assert o.error is None
        np.testing.assert_array_equal(o.outputs["y"], np.full((n, 3), n + 1))


def test_a_failing_request_fails_alone():
    infer = AddOne()
    reqs = requests(1, 2, 3)
    reqs.insert(1, {"x": -np.ones((1, 3), np.float32)})
    outcomes = run_merged(infer, reqs)
    assert infer.calls == [7, 1, 1, 2, 3]  # the merged call fails, then each request alone
    assert isinstance(outcomes[1].error, RuntimeError) and outcomes[1].outputs is None
    assert [o.outputs["y"][0, 0] for i, o in enumerate(outcomes) if i != 1] == [2, 3, 4]
    assert [o.run.members for i, o in enumerate(outcomes) if i != 1] == [(0,), (2,), (3,)]
    # A lone request's error is its answer: no second run.
    infer.calls.clear()
    [alone] = run_merged(infer, [reqs[1]])
    assert infer.calls == [1] and "negative" in str(alone.error)


def test_outputs_without_the_batch_rows_are_run_alone_and_reported():
    told = []
    outcomes = run_merged(lambda feeds: {"s": feeds["x"].sum()}, requests(1, 2), on_not_splittable=told.append)
    assert len(told) == 1 and isinstance(told[0], NotSplittable)
    assert [float(o.outputs["s"]) for o in outcomes] == [3.0, 12.0]
