"""`OCR(...)`: the PP-OCR pipeline with its models loaded, one decision per stage.

This is the one OCR module that loads models (`ppdeploy.deploy.load.load_model`). It decides, per stage, the
backend, the precision, what stays FP32, the FP32 rec guard, the rec output head, the GPU shape buckets and the
calibration/gate data; `OCRPipeline` (ppdeploy.tasks.ocr.pipeline) then only runs the runners it is handed.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from ppdeploy.backends import BACKENDS
from ppdeploy.core.errors import ConfigError, InputError
from ppdeploy.deploy.load import load_model
from ppdeploy.deploy.select import REFERENCE_BACKEND, first_runnable
from ppdeploy.deploy.speed import NOT_FASTER
from ppdeploy.graph.heads import CTC_GREEDY, check_head
from ppdeploy.tasks.ocr.models import (
    DEFAULT_SET,
    set_options,
    stage_models,
    with_model_dictionary,
)
from ppdeploy.tasks.ocr.pipeline import STAGES, OCROptions, OCRPipeline

log = logging.getLogger("ppdeploy.tasks.ocr")

# Stage precisions that keep a region in FP32 by default (OCR's keep_fp32="auto"; ppdeploy.graph.regions): BF16 and
# INT8 det move boxes enough to change lines unless the encoder stays FP32; the error comes from there, not from the
# layers after it (per-region experiments in BENCHMARKS.md).
AUTO_KEEP_FP32 = {"det": {"bf16": ("encoder",), "int8": ("encoder",)}}
# Rec precisions that get the FP32 guard by default (the guard re-reads the lines the fast model is unsure of), and
# the guard margin each gets when rec_guard_margin is not given (others: the guard's DEFAULT_MARGIN). INT8's errors are
# larger and often confident, so its margin is wider: at 2.0 the guard restored every line NNCF INT8 changed on the
# measured pages, re-reading about half of them (ppdeploy/tasks/ocr/guard.py and BENCHMARKS.md have the numbers).
GUARDED_PRECISIONS = ("bf16", "fp16", "int8")
GUARD_MARGINS = {"int8": 2.0}
# Stage precisions that do not pay for that stage: a stage given one of them only as the shared precision runs at the
# first alternative its backend runs here instead (stage_precisions). The direction classifier (48x192 crops, a few
# ms) is slower in INT8 than in FP32 on OpenVINO: it spends more converting than computing (BENCHMARKS.md).
AUTO_STAGE_PRECISION = {"cls": {"int8": ("bf16", "fp32")}}
# Extra options per stage for backends whose engine re-plans on every new input shape (class attribute
# `replans_per_shape`): det pages padded to multiples of 960 (a page's long side is <= 960 by default), rec widths
# to multiples of 320; batch dims are bucketed by the backend itself.
GPU_SHAPE_BUCKETS = {
    "det": {"pad_multiple": {"x": {"2": 960, "3": 960}}},
    "rec": {"pad_multiple": {"x": {"3": 320}}, "max_cached_shapes": 24},
    "cls": {"max_cached_shapes": 16},
}
# The FP32 reference the calibration crops and the task gate run on: the default CPU backend, always installed.


class OCR(OCRPipeline):
    """PP-OCR with its models loaded. `OCR(backend="auto").predict("page.png")` -> OCRResult.

    backend / precision: one name for all stages, or a dict per stage ({"det": "openvino", "default": "auto"}). A
    stage that gets a reduced precision only as the shared one (one name, or the dict's "default") runs at the fastest
    variant that pays on this machine: at an alternative where that precision does not pay for the stage at all
    (AUTO_STAGE_PRECISION: cls under INT8), and at FP32 when its engine turns out no faster than FP32 on its backend
    (the speed `load_model` measured and recorded, ppdeploy.deploy.speed), with a warning. A stage named in the dict
    runs at what it names (load_model still warns when that is not faster).
    load_options: extra `load_model` arguments per stage, e.g. {"rec": {"max_loss": 0.01}}.
    calib: a folder of page images for the reduced-precision stages, each calibrated on what the pipeline feeds it
    (det: the pages; cls/rec: the crops an FP32 detector finds on them). gate_data: labelled pages (not the
    calibration ones) on which those stages are gated by the page character accuracy of the whole pipeline.
    gpu_shape_buckets: on a backend that re-plans per input shape (ORT's CUDA provider), pad inputs into a few shape
    buckets, as PaddleOCR's own batching pads shorter crops; other backends are unaffected.
    rec_guard: "auto" loads an FP32 copy of rec on the same backend when rec runs bf16/fp16/int8 and re-reads the lines
    the fast model is unsure of (ppdeploy.tasks.ocr.guard; INT8 with the wider margin of GUARD_MARGINS unless
    rec_guard_margin is given); a precision name forces it, None turns it off.
    keep_fp32: what stays FP32 in a reduced-precision stage (ppdeploy.graph.regions); "auto": det's encoder under
    BF16 and INT8 (AUTO_KEEP_FP32); a dict per stage sets it; None turns it off.
    rec_head: "auto" appends the ctc_greedy head (ppdeploy.graph.heads) to an unguarded FP32/FP16 rec on a GPU
    backend (best class per step instead of the whole softmax to copy back); "ctc_greedy" anywhere; None never.
    models: the model generation (ppdeploy.tasks.ocr.models): "ppocrv4" (default) or "ppocrv6"; det_model /
    rec_model / cls_model replace its stages one by one; the options a set's models need (PP-OCRv6 det: mean/std
    0.5) apply under the ones given. A recognizer whose ONNX metadata carries its dictionary (PP-OCRv6's) is read
    with it unless rec_dictionary is given.
    Other keyword arguments are the pipeline options (ppdeploy.tasks.ocr.pipeline).
    """

    def __init__(self, backend: str | Mapping[str, str] = "auto", precision: str | Mapping[str, str] = "fp32",
                 det_model: Any = None, rec_model: Any = None,
                 cls_model: Any = None, use_cls: bool = True, threads: int | None = None,
                 load_options: Mapping[str, Mapping[str, Any]] | None = None, gpu_shape_buckets: bool = True,
                 rec_guard: str | None = "auto", calib: Any = None, gate_data: Any = None,
                 rec_head: str | None = "auto", keep_fp32: str | Mapping[str, Any] | None = "auto",
                 models: str = DEFAULT_SET, **options: Any):
        models_by_stage = stage_models(models, det_model, rec_model, cls_model)
        options = set_options(models, options, models_by_stage)  # what the generation's models need
        options = with_model_dictionary(options, models_by_stage["rec"])  # a dictionary the rec model carries
        opts = OCROptions.from_kwargs(**options)  # validate before spending time on engines
        backends = _per_stage(backend, "backend")
        precisions = stage_precisions(precision, backends)
        models = models_by_stage
        extra = _per_stage_mapping(load_options)
        if gpu_shape_buckets:
            bucketed = BACKENDS.where(lambda cls: cls.replans_per_shape)
            for stage, buckets in GPU_SHAPE_BUCKETS.items():
                switches = dict(extra[stage].get("extra") or {})
                for name in bucketed:
                    switches.setdefault(name, buckets)
                extra[stage]["extra"] = switches
        stages = [s for s in STAGES if s != "cls" or use_cls]
        keeps = keep_fp32_for(keep_fp32, precisions)
        guard_precision = rec_guard_precision(rec_guard, precisions["rec"] or "fp32")
        if guard_precision is not None and "rec_guard_margin" not in options and precisions["rec"] in GUARD_MARGINS:
            opts = OCROptions.from_kwargs(**options, rec_guard_margin=GUARD_MARGINS[precisions["rec"]])
        head = rec_head_for(rec_head, backends["rec"] or "auto", precisions["rec"] or "fp32", guard_precision)
        refs = _calibrate_from_pages(stages, calib, gate_data, models, precisions, extra, threads) \
            if calib is not None else {}
        for stage, keep in keeps.items():  # after the calibration, which sets precision_options of its own
            options_for_precision = dict(extra[stage].get("precision_options") or {})
            options_for_precision.setdefault("keep_fp32", keep)  # explicit load_options win
            extra[stage]["precision_options"] = options_for_precision
        self.deployments: dict[str, Any] = {}
        # Stage -> the reduced-precision engine's recorded speed against FP32, for stages left at FP32 because it did
        # not pay here (see `precision` above).
        self.left_at_fp32: dict[str, dict[str, Any]] = {}
        try:
            for stage in stages:
                heads = {"head": head} if stage == "rec" and head else {}
                dep = load_model(models[stage], backend=backends[stage] or "auto",
                                 precision=precisions[stage] or "fp32", threads=threads, **{**heads, **extra[stage]})
                self.deployments[stage] = dep
                if stage not in _named_stages(precision) and not pays_off(dep):
                    self.left_at_fp32[stage] = {"precision": dep.precision, **dep.speed_vs_fp32}
                    self.deployments[stage] = _at_fp32(stage, dep, models[stage], threads, extra[stage])
            if guard_precision is not None and self.deployments["rec"].precision != "fp32":
                # Same backend as the fast model, so the guard differs from it in precision only.
                self.deployments["rec_guard"] = load_model(models["rec"], backend=self.deployments["rec"].backend,
                                                           precision=guard_precision, threads=threads, **extra["rec"])
        except BaseException:
            self.close()  # the stages loaded before the failure
            raise
        finally:
            for d in refs.values():  # the calibration's FP32 references: the gates have run
                d.close()
        runners = {s: d.runner for s, d in self.deployments.items()}
        self._init(runners["det"], runners["rec"], runners.get("cls"), opts, runners.get("rec_guard"))


def pays_off(deployment: Any) -> bool:
    """Whether a stage's engine is faster than FP32 on its backend, as `load_model` measured and recorded it
    (ppdeploy.deploy.speed); an FP32 or unmeasured engine counts as paying."""
    ratio = (getattr(deployment, "speed_vs_fp32", None) or {}).get("ratio")
    return deployment.precision == "fp32" or ratio is None or ratio >= NOT_FASTER


def _at_fp32(stage: str, slow: Any, model: Any, threads: int | None, kwargs: Mapping[str, Any]) -> Any:
    """The stage at FP32 on the backend `slow` runs on, in place of `slow` (closed): a stage that got its reduced
    precision only as the shared one is left at FP32 where that precision does not pay on this machine."""
    log.warning("OCR %s: %s is not faster than FP32 on %s here (%.2fx FP32's speed); the stage runs at FP32 (name "
                "it in precision={'%s': '%s'} to keep it anyway)", stage, slow.precision, slow.backend,
                slow.speed_vs_fp32["ratio"], stage, slow.precision)
    backend = slow.backend
    slow.close()
    plain = {k: v for k, v in kwargs.items() if k not in ("calib", "precision_options", "max_loss", "head")}
    return load_model(model, backend=backend, precision="fp32", threads=threads, **plain)


def _named_stages(precision: str | Mapping[str, str]) -> set[str]:
    """The stages OCR(precision=...) names one by one (their precision is kept as asked)."""
    return set(precision) - {"default"} if isinstance(precision, Mapping) else set()


def _per_stage(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, Mapping):
        unknown = set(value) - set(STAGES) - {"default"}
        if unknown:
            raise ConfigError(f"{what} given for unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}"
                              " (and 'default' for the others)")
        default = value.get("default")
        return {s: value.get(s, default) for s in STAGES}
    return {s: value for s in STAGES}


def stage_precisions(precision: str | Mapping[str, str], backends: Mapping[str, Any]) -> dict[str, Any]:
    """Stage -> precision for OCR(precision=...). A stage that takes the shared precision (one name, or a dict's
    "default") is left at a faster one where that precision does not pay for it (AUTO_STAGE_PRECISION): the first
    of its alternatives the stage's likely backend runs here (`Backend.precision_unavailable`). A stage named
    explicitly gets what it names."""
    chosen = _per_stage(precision, "precision")
    named = _named_stages(precision)
    for stage, table in AUTO_STAGE_PRECISION.items():
        wanted = chosen.get(stage)
        if stage in named or wanted not in table:
            continue
        first = first_runnable(backends.get(stage) or "auto")
        backend = BACKENDS.get(first)() if first is not None else None
        chosen[stage] = next((p for p in table[wanted] if p == "fp32" or backend is None
                              or backend.precision_unavailable(p) is None), "fp32")
    return chosen


def _per_stage_mapping(load_options: Mapping[str, Mapping[str, Any]] | None) -> dict[str, dict[str, Any]]:
    load_options = load_options or {}
    unknown = set(load_options) - set(STAGES)
    if unknown:
        raise ConfigError(f"load_options given for unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    return {s: dict(load_options.get(s, {})) for s in STAGES}


def _calibrate_from_pages(stages, calib, gate_data, models, precisions, extra, threads) -> dict[str, Any]:
    """Put calibration (and the task gate) built from page images into `extra` for every reduced-precision stage.
    Returns the FP32 reference deployments the gates use; the caller closes them once the stages are loaded."""
    lowered = [s for s in stages if (precisions[s] or "fp32") != "fp32"]
    if not lowered:
        return {}
    # FP32 reference runners: the detector finds the crops rec/cls see; all three run the task gate.
    refs = {s: load_model(models[s], backend=REFERENCE_BACKEND, threads=threads) for s in stages}
    try:
        runners = {s: d.runner for s, d in refs.items()}
        for s in lowered:
            extra[s] = {**stage_load_kwargs(s, calib, runners=runners, gate_data=gate_data), **extra[s]}  # explicit wins
    except BaseException:
        for d in refs.values():
            d.close()
        raise
    return refs


CALIBRATION_METHODS = ("entropy", "minmax")  # preference order; see stage_load_kwargs


def stage_load_kwargs(role: str, calib_dir: str | Path, *, runners: Mapping[str, Any],
                      gate_data: str | Path | None = None, limit: int | None = None) -> dict[str, Any]:
    """Keyword arguments for `load_model(model of role, precision="int8"|"fp16"|"bf16", **kwargs)` so an OCR stage
    is calibrated on the pipeline's own inputs and, with `gate_data` (labelled pages, not the calibration pages),
    gated on page character accuracy. `runners`: FP32 runners of the stages. The INT8 quantizer is the one native
    to the backend that runs the stage ("auto", decided by deploy)."""
    if gate_data is not None and Path(gate_data).resolve() == Path(calib_dir).resolve():
        raise InputError("the gate's pages must not be the calibration pages")
    calib = OCRPipeline.calibration(role, calib_dir, runners=runners, limit=limit)
    # The quantizer is the backend's own (deploy decides); entropy calibration where it offers it (ONNX Runtime's QDQ
    # kept more lines than min-max on the rec/det activations), min-max for NNCF, which has no entropy method.
    options: dict[str, Any] = {"quantizer": "auto", "method": CALIBRATION_METHODS}
    if gate_data is not None:
        options.update(task_metric=OCRPipeline.metric(role, gate_data, runners),
                       task_name=f"ocr_char_accuracy[{Path(gate_data).resolve()}]")
    return {"calib": calib, "precision_options": options}


def keep_fp32_for(keep_fp32: str | Mapping[str, Any] | None,
                  precisions: Mapping[str, str | None]) -> dict[str, list[str]]:
    """Stage -> regions kept FP32, for OCR(keep_fp32=...) with these stage precisions."""
    if keep_fp32 is None or keep_fp32 in ("off", "none"):
        return {}
    if keep_fp32 == "auto":
        auto = {s: AUTO_KEEP_FP32.get(s, {}).get(precisions.get(s) or "fp32") for s in STAGES}
        return {s: list(keep) for s, keep in auto.items() if keep}
    if not isinstance(keep_fp32, Mapping):
        raise ConfigError(f"keep_fp32={keep_fp32!r}: give 'auto', None, or a dict per stage such as "
                          "{'det': ['encoder']}")
    unknown = set(keep_fp32) - set(STAGES)
    if unknown:
        raise ConfigError(f"keep_fp32 given for unknown stage(s) {sorted(unknown)}; stages are {', '.join(STAGES)}")
    out = {}
    for stage, keep in keep_fp32.items():
        keep = [keep] if isinstance(keep, str) else list(keep or ())
        if keep and (precisions.get(stage) or "fp32") == "fp32":
            raise ConfigError(f"keep_fp32 for {stage}: its precision is fp32; "
                              "keep_fp32 is for bf16, fp16 and int8 stages")
        if keep:
            out[stage] = keep
    return out


def rec_guard_precision(rec_guard: str | None, rec_precision: str) -> str | None:
    """The precision of the guard model OCR(rec_guard=...) loads for a rec model of `rec_precision` (None: no guard)."""
    if rec_guard is None or rec_guard in ("off", "none"):
        return None
    if rec_guard == "auto":
        return "fp32" if rec_precision in GUARDED_PRECISIONS else None
    if rec_guard == rec_precision:
        raise ConfigError(f"rec_guard={rec_guard!r} is the rec model's own precision; a guard must be more precise")
    return rec_guard


def rec_head_for(rec_head: str | None, backend: str, precision: str, guard_precision: str | None) -> str | None:
    """The output head OCR(rec_head=...) appends to the rec graph (None: the model's own softmax)."""
    if rec_head is None or rec_head in ("off", "none", "softmax"):
        return None
    if rec_head == "auto":
        if guard_precision is not None or precision not in ("fp32", "fp16"):
            return None
        first = first_runnable(backend)
        return CTC_GREEDY if first is not None and BACKENDS.get(first).device == "gpu" else None
    check_head(rec_head)
    if guard_precision is not None:
        raise ConfigError(f"rec_head={rec_head!r} leaves only the best class per step, and the rec guard needs the "
                          "runner-up classes", hint="pass rec_guard=None, or rec_head=None")
    return rec_head


__all__ = ["AUTO_KEEP_FP32", "AUTO_STAGE_PRECISION", "GPU_SHAPE_BUCKETS", "GUARDED_PRECISIONS", "GUARD_MARGINS", "OCR",
           "keep_fp32_for", "pays_off", "rec_guard_precision", "rec_head_for", "stage_load_kwargs", "stage_precisions"]
