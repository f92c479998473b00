"""Triton Python-backend model running ppdeploy's PP-OCR pipeline; `ppdeploy export triton` copies this file to
`<repo>/<name>/1/model.py` next to `ocr.json`.

Why a Python model and not an ensemble: an ensemble is a fixed graph of tensor models, but OCR crops a
data-dependent number of text lines out of the image between detection and recognition, and its pre/post
processing (resize, DB box extraction, perspective crops, CTC decoding) is not a tensor model. So this model
runs ppdeploy's own task code (the same code as `ppdeploy ocr` and `/v1/ocr`) and calls the three networks
as separate Triton models through BLS (business-logic scripting): Triton's dynamic batcher then batches det,
cls and rec across concurrent requests, on whatever backend the repository gives them (ONNX Runtime, TensorRT).

Input  `image`:  BYTES [1]     the encoded image file (PNG, JPEG, ...).
Outputs `texts`: BYTES [-1]    one UTF-8 string per text line, reading order;
        `scores`: FP32 [-1]    recognition confidence per line;
        `boxes`: INT32 [-1,4,2] the line's quadrilateral in image pixels (clockwise from top-left);
        `result_json`: BYTES [1] ppdeploy's `OCRResult.to_dict()` as JSON (lines, size, per-stage timings).

Triton's Python environment needs ppdeploy without its engines: `pip install ppdeploy` in the Triton image.
This module is never imported by ppdeploy itself (`triton_python_backend_utils` exists only inside Triton).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from ppdeploy.backends.base import Runner
from ppdeploy.core.tensors import IOSpec, TensorSpec
from ppdeploy.tasks.ocr.pipeline import OCRPipeline

SPEC_FILE = "ocr.json"


def io_from_json(data: dict) -> IOSpec:
    def tensors(items: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(TensorSpec(t["name"], t["dtype"], tuple(t["shape"])) for t in items)

    return IOSpec(tensors(data["inputs"]), tensors(data["outputs"]))


class TritonModelRunner(Runner):
    """A ppdeploy Runner whose inference is a BLS request to another model of this Triton server."""

    backend = "triton"

    def __init__(self, model_name: str, io: IOSpec):
        super().__init__(io)
        self.model_name = model_name

    def _infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request = pb_utils.InferenceRequest(
            model_name=self.model_name,
            requested_output_names=self.output_names,
            inputs=[pb_utils.Tensor(name, array) for name, array in feeds.items()],
        )
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"model '{self.model_name}': {response.error().message()}")
        return {name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in self.output_names}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        model_dir = Path(args["model_repository"])
        if model_dir.suffix == ".py":  # Triton 22.06 passed the path of model.py here
            model_dir = model_dir.parent.parent
        spec_path = model_dir / str(args["model_version"]) / SPEC_FILE
        spec = json.loads(spec_path.read_text())
        runners = {stage: TritonModelRunner(entry["model"], io_from_json(entry["io"]))
                   for stage, entry in spec["stages"].items()}
        options = dict(spec.get("options", {}))
        dictionary = options.get("rec_dictionary")
        if dictionary and not Path(dictionary).is_absolute():  # shipped inside the version folder
            options["rec_dictionary"] = str(spec_path.parent / dictionary)
        self.ocr = OCRPipeline.from_runners(runners["det"], runners["rec"], runners.get("cls"), **options)

    def execute(self, requests: list) -> list:
        # One response per request, in order; a bad image fails its own request only.
        return [self._one(request) for request in requests]

    def _one(self, request):
        try:
            data = pb_utils.get_input_tensor_by_name(request, "image").as_numpy().reshape(-1)
            if data.size != 1:
                raise ValueError(f"send exactly one encoded image per request, got {data.size}")
            item = data[0]
            result = self.ocr.predict(item if isinstance(item, bytes) else bytes(item))
        except Exception as exc:  # noqa: BLE001 - every failure must become this request's error response
            return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc)))
        lines = result.lines
        texts = np.array([line.text.encode("utf-8") for line in lines], dtype=np.object_)
        scores = np.array([line.score for line in lines], dtype=np.float32)
        boxes = np.array([line.box for line in lines], dtype=np.int32).reshape(-1, 4, 2)
        body = np.array([json.dumps(result.to_dict(), ensure_ascii=False).encode("utf-8")], dtype=np.object_)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("texts", texts), pb_utils.Tensor("scores", scores),
            pb_utils.Tensor("boxes", boxes), pb_utils.Tensor("result_json", body),
        ])

    def finalize(self) -> None:
        self.ocr = None
