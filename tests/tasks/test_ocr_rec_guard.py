"""The rec guard: a reduced-precision rec model whose unsure lines are read again by the FP32 one."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.tasks.ocr.builder import OCR
from ppdeploy.tasks.ocr.dataset import read_labelled_folder
from ppdeploy.tasks.ocr.guard import CHAR_SWAP_FACTOR, uncertain_rows


def one_hot_path(path: list[int], classes: int = 5) -> np.ndarray:
    probs = np.zeros((1, len(path), classes), dtype=np.float32)
    probs[0, np.arange(len(path)), path] = 1.0
    return probs


def test_a_close_call_that_changes_the_text_is_uncertain():
    probs = one_hot_path([0, 1, 0, 2, 0])
    probs[0, 3] = [0.45, 0.0, 0.55, 0.0, 0.0]  # 2 vs blank: the text would read "1" instead of "12"
    assert uncertain_rows(probs, 0.3) == [0]
    assert uncertain_rows(probs, 0.21) == [0]  # the margin is a log-ratio: log(0.55 / 0.45) = 0.20
    assert uncertain_rows(probs, 0.19) == []  # (a margin on the difference, 0.1, would have flagged it at 0.19)
    assert uncertain_rows(probs, 0.0) == []


def test_one_character_for_another_is_held_to_a_narrower_margin():
    probs = one_hot_path([0, 1, 0, 2, 0])
    probs[0, 3] = [0.0, 0.0, 0.55, 0.45, 0.0]  # 2 vs 3: "13" instead of "12"; log-ratio 0.2007
    assert CHAR_SWAP_FACTOR == 0.7
    assert uncertain_rows(probs, 0.29) == [0]  # 0.7 * 0.29 = 0.203 reaches it
    assert uncertain_rows(probs, 0.28) == []  # 0.196 does not; a blank at the same ratio would count (test above)


def test_a_close_call_at_the_edge_of_a_run_is_not():
    probs = one_hot_path([0, 1, 1, 0])
    probs[0, 2] = [0.45, 0.55, 0.0, 0.0, 0.0]  # "1 1" or "1 blank": "1" either way
    assert uncertain_rows(probs, 0.3) == []
    probs = one_hot_path([0, 1, 1, 1, 0])
    probs[0, 2] = [0.45, 0.55, 0.0, 0.0, 0.0]  # but a blank in the middle of the run splits it: "11"
    assert uncertain_rows(probs, 0.3) == [0]


def test_flips_that_only_change_the_text_together_are_found():
    # Each step alone can turn blank without changing "1"; both together erase it.
    probs = one_hot_path([0, 1, 1, 0])
    probs[0, 1] = probs[0, 2] = [0.45, 0.55, 0.0, 0.0, 0.0]
    assert uncertain_rows(probs, 0.3) == [0]


def test_a_third_class_within_the_margin_counts():
    probs = one_hot_path([0, 1, 0])
    probs[0, 1] = [0.0, 0.4, 0.3, 0.3, 0.0]  # runner-up 2 and third 3 both within a log-ratio 0.29 of the best
    assert uncertain_rows(probs, 0.42) == [0]  # characters against a character: 0.7 * 0.42 = 0.294
    assert uncertain_rows(probs, 0.40) == []


def test_logits_are_judged_as_their_softmax():
    probs = one_hot_path([0, 1, 0, 2, 0])
    probs[0, 3] = [0.0, 0.0, 0.55, 0.45, 0.0]
    logits = np.log(np.maximum(probs, 1e-6)) * 3 + 7  # a model without its final softmax (and shifted)
    softened = np.exp(logits - logits.max(axis=2, keepdims=True))
    softened /= softened.sum(axis=2, keepdims=True)
    # cubed: log-ratio 3 * 0.2 = 0.6 between two characters, so a margin of 0.6 / 0.7 = 0.86 reaches it
    assert uncertain_rows(logits, 0.9) == uncertain_rows(softened, 0.9) == [0]
    assert uncertain_rows(logits, 0.8) == uncertain_rows(softened, 0.8) == []


def test_only_the_unsure_rows_of_a_batch_are_returned():
    probs = np.concatenate([one_hot_path([1, 0, 2]), one_hot_path([1, 0, 2]), one_hot_path([3, 0, 4])])
    probs[1, 2] = [0.0, 0.0, 0.5, 0.0, 0.5]
    assert uncertain_rows(probs, 0.2) == [1]


class LogitNoiseRunner:
    """The real rec runner with every output probability multiplied by exp(u), u uniform in [-eps, eps], and renormalised:
    a stand-in for a lower-precision build whose error is bounded (the ratio of any two probabilities moves by at most
    exp(2 eps)), so where the greedy text can change is known in advance."""

    def __init__(self, runner, eps: float):
        self.runner, self.eps, self.io = runner, eps, runner.io
        self.rng = np.random.default_rng(0)

    def infer(self, feeds):
        out = {}
        for name, probs in self.runner.infer(feeds).items():
            noisy = np.log(np.maximum(probs, 1e-30)) + self.rng.uniform(-self.eps, self.eps, probs.shape)
            noisy = np.exp(noisy - noisy.max(axis=2, keepdims=True))
            out[name] = (noisy / noisy.sum(axis=2, keepdims=True)).astype(np.float32)
        return out


def page_lines(ocr, pages):
    results = [ocr.predict(p.path) for p in pages]
    return [Counter(line.text for line in r.lines) for r in results], sum(r.guarded_lines for r in results)


def same_lines(a, b) -> int:
    return sum(sum((x & y).values()) for x, y in zip(a, b))


@pytest.mark.slow
def test_guard_restores_the_reference_text_that_a_noisy_rec_changed(ocr_ort, synth_pages):
    pages = read_labelled_folder(synth_pages)[:6]
    det, cls, rec = ocr_ort.detector.runner, ocr_ort.classifier.runner, ocr_ort.recognizer.runner
    reference, _ = page_lines(ocr_ort, pages)
    total = sum(sum(c.values()) for c in reference)
    # eps = 0.5 moves the log-ratio of any two probabilities by at most 1: a flipped step is within 1 after the noise,
    # which a margin of 1 / CHAR_SWAP_FACTOR covers for every pair (this noise, unlike BF16's, is as wide for two
    # characters as for a character and the blank).
    noisy = OCR.from_runners(det, LogitNoiseRunner(rec, 0.5), cls)
    unguarded, _ = page_lines(noisy, pages)
    assert same_lines(reference, unguarded) < total  # the negative control: the noise does change some lines
    guarded = OCR.from_runners(det, LogitNoiseRunner(rec, 0.5), cls, rec_guard=rec,
                               rec_guard_margin=1.0 / CHAR_SWAP_FACTOR)
    lines, reread = page_lines(guarded, pages)
    assert same_lines(reference, lines) == total
    assert 0 < reread < total  # it re-read some lines, not all of them


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no avx512_bf16/AMX")
def test_bf16_rec_with_its_fp32_guard_reads_like_fp32(ocr_for, synth_pages):
    pages = read_labelled_folder(synth_pages)
    reference, _ = page_lines(ocr_for("openvino"), pages)
    total = sum(sum(c.values()) for c in reference)
    with OCR(backend="openvino", precision={"rec": "bf16"}) as fast:
        assert set(fast.deployments) == {"det", "cls", "rec", "rec_guard"}
        assert fast.deployments["rec_guard"].precision == "fp32"
        lines, reread = page_lines(fast, pages)
    assert same_lines(reference, lines) >= 0.99 * total
    assert 0 < reread < 0.5 * total


@pytest.mark.slow
@pytest.mark.skipif(not cpu_supports_bf16(), reason="CPU has no avx512_bf16/AMX")
def test_cli_rec_guard_flags():
    import argparse

    from ppdeploy.cli.ocr import add_ocr_model_args, build_ocr
    from ppdeploy.core.errors import ConfigError

    parser = argparse.ArgumentParser()
    add_ocr_model_args(parser)
    with build_ocr(parser.parse_args(["--backend", "openvino", "--rec-precision", "bf16", "--rec-guard", "off"])) as ocr:
        assert "rec_guard" not in ocr.deployments and not ocr.guarded
    args = parser.parse_args(["--backend", "openvino", "--rec-precision", "bf16", "--rec-guard-margin", "0.1"])
    with build_ocr(args) as ocr:
        assert ocr.guarded and ocr.recognizer.runner.margin == 0.1
    with pytest.raises(ConfigError, match="guard_margin"):
        build_ocr(parser.parse_args(["--rec-guard-margin", "-1"]))


@pytest.mark.slow
def test_a_served_ocr_pipeline_takes_a_rec_guard_stage(ocr_ort, synth_pages):
    from pydantic import ValidationError

    from ppdeploy.repository.config import ModelConfig
    from ppdeploy.serve.models import build_task

    pages = read_labelled_folder(synth_pages)[:2]
    det, cls, rec = ocr_ort.detector.runner, ocr_ort.classifier.runner, ocr_ort.recognizer.runner
    cfg = ModelConfig(name="ocr", task="ocr", pipeline={"det": "d", "cls": "c", "rec": "r", "rec_guard": "g"},
                      task_options={"rec_guard_margin": 1.0})
    served = build_task(cfg, {"det": det, "cls": cls, "rec": LogitNoiseRunner(rec, 0.5), "rec_guard": rec})
    assert served.guarded
    assert page_lines(served, pages)[0] == page_lines(ocr_ort, pages)[0]
    with pytest.raises(ValidationError, match="unknown stage"):
        ModelConfig(name="ocr", task="ocr", pipeline={"det": "d", "rec": "r", "guard": "g"})


class FixedRunner:
    """Answers fixed N x T x 5 probabilities (rows taken by the batch's first input value) and records its calls."""

    def __init__(self, probs: np.ndarray, borrowed: bool = False):
        from ppdeploy.core.tensors import IOSpec, TensorSpec

        self.probs, self.calls = probs, []
        self.io = IOSpec((TensorSpec("x", "float32", (None, 1)),), (TensorSpec("y", "float32", (None, None, 5)),))
        if borrowed:
            self.infer_borrowed = lambda feeds: self._answer(feeds, "borrowed")

    def infer(self, feeds):
        return self._answer(feeds, "infer")

    def _answer(self, feeds, how):
        rows = feeds["x"][:, 0].astype(int)
        self.calls.append((how, rows.tolist()))
        return {"y": self.probs[rows]}


def test_the_guard_answers_each_rows_best_classes_from_the_model_that_read_it():
    from ppdeploy.graph.heads import CTC_INDEX, CTC_PROB
    from ppdeploy.tasks.ocr.guard import GuardedRecRunner

    fast_probs = np.concatenate([one_hot_path([1, 0, 2]), one_hot_path([1, 0, 2]), one_hot_path([3, 0, 4])])
    fast_probs[1, 2] = [0.0, 0.0, 0.55, 0.0, 0.45]  # row 1: 2 or 4, a close call
    guard_probs = np.concatenate([one_hot_path([4, 0, 4])] * 3)
    guard_probs[1, 2] = [0.0, 0.0, 0.3, 0.0, 0.7]  # the guard's own, different answer for row 1
    fast, guard = FixedRunner(fast_probs, borrowed=True), FixedRunner(guard_probs)
    runner = GuardedRecRunner(fast, guard, margin=0.3)
    assert [t.name for t in runner.io.outputs] == [CTC_INDEX, CTC_PROB] and runner.classes == 5
    out = runner.infer({"x": np.array([[0.0], [1.0], [2.0]], np.float32)})
    assert fast.calls == [("borrowed", [0, 1, 2])] and guard.calls == [("infer", [1])]  # row 1 alone, re-read
    np.testing.assert_array_equal(out[CTC_INDEX], [[1, 0, 2], [4, 0, 4], [3, 0, 4]])
    np.testing.assert_allclose(out[CTC_PROB], [[1, 1, 1], [1, 1, 0.7], [1, 1, 1]])
    assert runner.last_guard_rows == 1 and runner.guarded_rows == 1
    from ppdeploy.tasks.ocr.rec import TextRecognizer

    with pytest.raises(Exception, match="5 classes"):  # the dictionary check still sees the softmax behind the guard
        TextRecognizer(runner)
