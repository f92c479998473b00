"""The gate's agreement metrics on hand-made outputs whose right answer is known."""
from __future__ import annotations

import numpy as np

from ppdeploy.graph.heads import CTC_INDEX, CTC_PROB
from ppdeploy.precision.compare import agreement, pick_metric


def one_hot(ids: list[list[int]], classes: int = 30) -> np.ndarray:
    out = np.full((len(ids), len(ids[0]), classes), 0.01 / (classes - 1), np.float32)
    for b, row in enumerate(ids):
        for t, c in enumerate(row):
            out[b, t, c] = 0.99
    return out


def test_metric_picked_from_shape_and_head_names():
    assert pick_metric(one_hot([[1, 0, 2]])) == "ctc"
    assert pick_metric(np.array([[0.2, 0.8]], np.float32)) == "top1"
    assert pick_metric(np.random.default_rng(0).random((1, 1, 8, 8)).astype(np.float32)) == "mask_iou"
    assert pick_metric(np.ones((2, 3), np.float32) * 5) == "rel_l2"
    assert pick_metric(np.zeros((1, 3), np.int64), CTC_INDEX) == "ctc"
    assert pick_metric(np.ones((1, 3), np.float32), CTC_PROB) == "prob_abs"


def test_ctc_on_ids_equals_ctc_on_the_softmax_they_come_from():
    ref_ids = [[1, 1, 0, 2, 3, 0, 3]]  # text 1 2 3 3
    cand_ids = [[1, 0, 0, 2, 3, 3, 3]]  # text 1 2 3: one of four characters lost
    on_softmax = agreement([{"p": one_hot(ref_ids)}], [{"p": one_hot(cand_ids)}])
    on_ids = agreement([{CTC_INDEX: np.array(ref_ids)}], [{CTC_INDEX: np.array(cand_ids)}])
    assert on_softmax["agreement"] == on_ids["agreement"] == 0.75
    assert on_ids["outputs"][CTC_INDEX]["metric"] == "ctc"


def test_head_outputs_are_judged_by_their_worst():
    ids = np.array([[1, 0, 2]])
    prob = np.array([[0.9, 0.8, 0.7]], np.float32)
    same = agreement([{CTC_INDEX: ids, CTC_PROB: prob}], [{CTC_INDEX: ids, CTC_PROB: prob + 0.01}])
    assert same["outputs"][CTC_INDEX]["agreement"] == 1.0
    assert abs(same["outputs"][CTC_PROB]["agreement"] - 0.99) < 1e-6 and abs(same["agreement"] - 0.99) < 1e-6
