"""Session fixtures for the task tests: the synthetic labelled OCR set and OCR pipelines per backend."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synth_pages(tmp_path_factory) -> Path:
    """12 generated pages (~180 labelled lines), fixed seed: Chinese, English, dates, prices, digits."""
    from ppdeploy.tasks.ocr.synth import SynthOptions, generate

    out = tmp_path_factory.mktemp("synth_ocr")
    generate(out, SynthOptions(pages=12, seed=2024))
    return out


_PIPELINES: dict[str, object] = {}


@pytest.fixture(scope="session")
def ocr_for():
    """ocr_for("onnxruntime") -> a cached OCR pipeline on that backend (built once per session)."""
    from ppdeploy.tasks.ocr.builder import OCR

    def get(backend: str):
        if backend not in _PIPELINES:
            _PIPELINES[backend] = OCR(backend=backend)
        return _PIPELINES[backend]

    yield get
    for ocr in _PIPELINES.values():
        ocr.close()
    _PIPELINES.clear()


@pytest.fixture(scope="session")
def ocr_ort(ocr_for):
    return ocr_for("onnxruntime")


@pytest.fixture(scope="session")
def labelled(synth_pages):
    """The synthetic labelled pages as (BGR images, [(text, box)] per page): what the agreement tests score."""
    import cv2

    from ppdeploy.tasks.ocr.dataset import read_labelled_folder

    data = read_labelled_folder(synth_pages)
    images = [cv2.imread(str(item.path)) for item in data]
    gts = [[(line.text, line.box) for line in item.lines] for item in data]
    return images, gts


def score_against_reference(backend, preds, gts, ref_preds, ref_metrics):
    """(ppdeploy's metrics, its text agreement with the reference, the JSON report both agreement tests print)."""
    from ppdeploy.tasks.ocr.metrics import score_dataset, text_agreement

    metrics = score_dataset(preds, gts)
    agreement = text_agreement(preds, ref_preds)
    report = {"backend": backend, "ppdeploy": metrics.to_dict(), "reference": ref_metrics.to_dict(),
              "same_text": agreement.rate, "lines": agreement.reference_lines,
              "differences": agreement.differences[:10]}
    return metrics, agreement, report
