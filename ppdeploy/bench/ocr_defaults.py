"""Choosing the OCR detector's default settings on generated pages, and checking them on pages held out.

    python -m ppdeploy.bench.ocr_defaults tune     # sweep candidate det settings on the `tune` split
    python -m ppdeploy.bench.ocr_defaults compare  # the `heldout` split: old / RapidOCR's / new defaults and
                                                   # rapidocr-paddle itself, per-subset accuracy and time per page

The two splits come from ppdeploy.tasks.ocr.synth.suite (generated on demand under --root, never committed);
nothing here reads `heldout` while tuning. Accuracy is page character accuracy (ppdeploy.tasks.ocr.metrics) per
subset, each subset weighing the same in the mean, since a default must hold on every kind of page.

Contestants (det settings; cls/rec and drop_score 0.5 are the same for all):
- "paddleocr": the defaults ppdeploy had, PaddleOCR 2.x's (long side <= 960, ImageNet mean/std, box_thresh 0.6,
  unclip 1.5, no dilation, one pass);
- "rapidocr-settings": rapidocr-paddle 1.4.5's config.yaml det values run through ppdeploy's pipeline (short side
  >= 736, mean/std 0.5, box_thresh 0.5, unclip 1.6, dilation);
- "rapidocr-paddle": the rapidocr_paddle package itself with its own defaults (its config.yaml as shipped,
  including its 2000 px page cap and letterboxing), on Paddle Inference, in this process;
- "new": DetOptions() as the code now has it.

`tune` caches what does not change between candidates: the detector's output per (page, input tensor) and the
text read from each crop. Its numbers are for ranking candidates; `compare` runs every pipeline uncached.
Time per page in `compare` is wall time of the pipeline on decoded pages (decode excluded), after one warm-up
page, single process; on a shared machine it is only indicative.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from ppdeploy.core.cache import default_root
from ppdeploy.core.lazy import lazy_import
from ppdeploy.tasks.ocr.crop import crop_all
from ppdeploy.tasks.ocr.dataset import read_labelled_folder
from ppdeploy.tasks.ocr.det import DetOptions
from ppdeploy.tasks.ocr.metrics import OCRMetrics, score_image
from ppdeploy.tasks.ocr.pipeline import OCRPipeline
from ppdeploy.tasks.ocr.synth.suite import SUBSETS, generate_split

cv2 = lazy_import("cv2", install="opencv-python-headless")

PADDLEOCR = {"limit_side_len": 960, "limit_type": "max", "thresh": 0.3, "box_thresh": 0.6, "unclip_ratio": 1.5,
             "use_dilation": False, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "adaptive": False}
RAPIDOCR = {"limit_side_len": 736, "limit_type": "min", "thresh": 0.3, "box_thresh": 0.5, "unclip_ratio": 1.6,
            "use_dilation": True, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "adaptive": False}


def default_eval_root() -> Path:
    return default_root() / "ocr-eval"


@dataclass
class Page:
    name: str
    image: np.ndarray
    gt: list[tuple[str, Any]]


def load_split(root: Path, split: str, subsets: list[str] | None = None, images: int | None = None
               ) -> dict[str, list[Page]]:
    """Generate (or reuse) the split and decode its pages: {subset: [Page]}."""
    folders = generate_split(root, split, subsets=subsets)
    out = {}
    for name, folder in folders.items():
        items = read_labelled_folder(folder)[:images]
        out[name] = [Page(item.path.name, cv2.imread(str(item.path)), [(l.text, l.box) for l in item.lines])
                     for item in items]
    return out


def det_options(kwargs: dict[str, Any], base: DetOptions | None = None) -> DetOptions:
    """`kwargs` over `base` (default: DetOptions())."""
    merged = {**dataclasses.asdict(base or DetOptions()), **kwargs}
    return DetOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()})


# -- scoring ---------------------------------------------------------------------------------------------------
Reader = Callable[[np.ndarray], list[tuple[str, Any]]]


def score_subsets(read: Reader, data: dict[str, list[Page]], *, warmup: bool = False) -> dict[str, dict[str, Any]]:
    """Per subset: char accuracy, det recall / precision, lines, and mean seconds per page."""
    out: dict[str, dict[str, Any]] = {}
    for name, pages in data.items():
        if warmup and pages:
            read(pages[0].image)
        total, seconds = OCRMetrics(), 0.0
        for page in pages:
            t = time.perf_counter()
            pred = read(page.image)
            seconds += time.perf_counter() - t
            total.add(score_image(pred, page.gt))
        out[name] = {"char_accuracy": total.char_accuracy, "det_recall": total.det_recall,
                     "det_precision": total.det_precision, "lines": total.gt_lines, "pages": len(pages),
                     "s_per_page": seconds / max(1, len(pages))}
    return out


def mean_accuracy(per_subset: dict[str, dict[str, Any]]) -> float:
    return float(np.mean([v["char_accuracy"] for v in per_subset.values()]))


def pipeline_reader(pipeline: OCRPipeline) -> Reader:
    def read(image: np.ndarray) -> list[tuple[str, Any]]:
        return [(line.text, line.box) for line in pipeline.predict_bgr(image).lines]
    return read


def rapidocr_paddle_reader(threads: int | None = None) -> Reader:
    """rapidocr_paddle with its own config.yaml (the peer as its users run it)."""
    from rapidocr_paddle import RapidOCR

    engine = RapidOCR(**({"cpu_math_library_num_threads": threads} if threads else {}))

    def read(image: np.ndarray) -> list[tuple[str, Any]]:
        result, _ = engine(image)
        return [(text, np.asarray(box, np.float32).tolist()) for box, text, _score in (result or [])]
    return read


# -- tuning with caches ----------------------------------------------------------------------------------------
class CachedDetRunner:
    """A det runner that remembers its output per input tensor (a sweep over post-processing re-feeds the same
    tensors)."""

    def __init__(self, runner: Any):
        self.runner, self.io, self.cache = runner, runner.io, {}

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blob = next(iter(feeds.values()))
        key = (blob.shape, hashlib.blake2b(blob.tobytes(), digest_size=16).digest())
        if key not in self.cache:
            self.cache[key] = self.runner.infer(feeds)
        return self.cache[key]


class CachedTextReader:
    """det with the given options, then cls + rec per crop, remembering each crop's text (for ranking only:
    uncached rec batches crops 6 at a time, which moves a few scores slightly)."""

    def __init__(self, base: OCRPipeline, det_runner: CachedDetRunner, texts: dict):
        self.base, self.det_runner, self.texts = base, det_runner, texts

    def reader(self, det_kwargs: dict[str, Any]) -> Reader:
        options = dataclasses.replace(self.base.options, det=det_options(det_kwargs))
        pipe = OCRPipeline.from_runners(det=self.det_runner, rec=self.base.recognizer.runner,
                                        cls=self.base.classifier.runner if self.base.classifier else None,
                                        options=options)

        def read(image: np.ndarray) -> list[tuple[str, Any]]:
            boxes = pipe.detector(image).boxes
            if not len(boxes):
                return []
            crops = crop_all(image, boxes)
            keys = [(c.shape, hashlib.blake2b(np.ascontiguousarray(c).tobytes(), digest_size=16).digest())
                    for c in crops]
            missing = [i for i, k in enumerate(keys) if k not in self.texts]
            if missing:
                todo = [crops[i] for i in missing]
                if pipe.classifier is not None:
                    todo, _ = pipe.classifier(todo)
                texts, _ = pipe.recognizer(todo)
                for i, t in zip(missing, texts):
                    self.texts[keys[i]] = t
            return [(self.texts[k][0], b.tolist()) for k, b in zip(keys, boxes)
                    if self.texts[k][1] >= options.drop_score]
        return read


def candidates() -> Iterable[tuple[str, dict[str, Any]]]:
    """Stage 1: the resolution rule (with each of the two post-processing sets). Stage 2 (in `tune`): the
    post-processing values one at a time around the best rule."""
    rules = {  # (min736 without the adaptive pass is "rapidocr-settings" with RapidOCR's post-processing)
        "max960": {"limit_type": "max", "limit_side_len": 960, "adaptive": False},
        "max960+adaptive15-40": {"limit_type": "max", "limit_side_len": 960, "adaptive": True,
                                 "adaptive_min_px": 15.0, "adaptive_max_px": 40.0},
        "max960+adaptive20-48": {"limit_type": "max", "limit_side_len": 960, "adaptive": True,
                                 "adaptive_min_px": 20.0, "adaptive_max_px": 48.0},
        "max960+adaptive24-40": {"limit_type": "max", "limit_side_len": 960, "adaptive": True,
                                 "adaptive_min_px": 24.0, "adaptive_max_px": 40.0},
        "min736+adaptive15-40": {"limit_type": "min", "limit_side_len": 736, "adaptive": True,
                                 "adaptive_min_px": 15.0, "adaptive_max_px": 40.0},
    }
    post = {"paddle-post": {k: PADDLEOCR[k] for k in ("thresh", "box_thresh", "unclip_ratio", "use_dilation",
                                                       "mean", "std")},
            "rapid-post": {k: RAPIDOCR[k] for k in ("thresh", "box_thresh", "unclip_ratio", "use_dilation",
                                                     "mean", "std")}}
    for (rn, r), (pn, p) in itertools.product(rules.items(), post.items()):
        yield f"{rn}/{pn}", {**p, **r}


STAGE2 = {
    "adaptive_min_px": (15.0, 18.0, 20.0, 24.0),
    "adaptive_max_px": (32.0, 40.0, 48.0),
    "unclip_ratio": (1.5, 1.6, 1.8),
    "box_thresh": (0.5, 0.6),
    "use_dilation": (False, True),
    "mean_std": ("imagenet", "half"),
}
MEAN_STD = {"imagenet": {"mean": PADDLEOCR["mean"], "std": PADDLEOCR["std"]},
            "half": {"mean": RAPIDOCR["mean"], "std": RAPIDOCR["std"]}}


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return json.dumps(a, sort_keys=True, default=list) == json.dumps(b, sort_keys=True, default=list)


def _apply(kwargs: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {**kwargs, **(MEAN_STD[value] if key == "mean_std" else {key: value})}


def tune(root: Path, *, images: int | None, subsets: list[str] | None, threads: int | None, log=print,
         resume: Path | None = None) -> dict[str, Any]:
    """Stage 1 over `candidates()`, then one pass of coordinate descent over STAGE2 from the best; the objective is
    the mean over subsets of page character accuracy. `resume`: a JSON file of results kept between runs (the
    same images and subsets must be asked for)."""
    from ppdeploy.tasks.ocr.builder import OCR

    data = load_split(root, "tune", subsets, images)
    base = OCR(backend="onnxruntime", threads=threads, rec_guard=None)
    cached = CachedTextReader(base, CachedDetRunner(base.detector.runner), {})
    results: dict[str, dict[str, Any]] = {}
    if resume is not None and resume.is_file():
        results = json.loads(resume.read_text()).get("results", {})

    def run(name: str, kwargs: dict[str, Any]) -> float:
        same = [n for n, r in results.items() if _same(r["det"], kwargs)]
        if same and name not in results:
            return results[same[0]]["mean"]
        if name not in results:
            per = score_subsets(cached.reader(kwargs), data)
            results[name] = {"det": {k: v for k, v in kwargs.items()}, "subsets": per, "mean": mean_accuracy(per)}
            log(f"{results[name]['mean']:.4f}  {name}  " +
                " ".join(f"{k}={v['char_accuracy']:.3f}" for k, v in per.items()))
            if resume is not None:
                resume.write_text(json.dumps({"results": results}, default=str))
        return results[name]["mean"]

    old = run("paddleocr", PADDLEOCR)
    run("rapidocr-settings", RAPIDOCR)
    stage1 = {name: run(name, kw) for name, kw in candidates()}
    best_name = max(stage1, key=stage1.get)
    best = dict(results[best_name]["det"])
    best_score = stage1[best_name]
    name = best_name
    for key, values in STAGE2.items():  # coordinate descent, one pass
        if key.startswith("adaptive_") and not best.get("adaptive"):
            continue
        step_best = name
        for value in values:
            kw = _apply(best, key, value)
            if _same(kw, best):
                continue
            score = run(f"{name} {key}={value}", kw)
            if score > best_score + 1e-4:
                best, best_score, step_best = kw, score, f"{name} {key}={value}"
        name = step_best
    floor = {k: v["char_accuracy"] for k, v in results["paddleocr"]["subsets"].items()}
    chosen = next(r for r in results.values() if _same(r["det"], best))
    return {"split": "tune", "results": results, "chosen": best, "chosen_mean": best_score, "paddleocr_mean": old,
            "chosen_vs_paddleocr": {k: chosen["subsets"][k]["char_accuracy"] - floor[k] for k in floor}}


# -- the held-out comparison -----------------------------------------------------------------------------------
CONTESTANTS = ("paddleocr", "rapidocr-settings", "rapidocr-paddle", "new")


def compare(root: Path, *, images: int | None, subsets: list[str] | None, threads: int | None,
            with_peer: bool = True, backend: str = "onnxruntime", models: str = "ppocrv4", log=print,
            contestants: tuple[str, ...] = CONTESTANTS) -> dict[str, Any]:
    from ppdeploy.tasks.ocr.builder import OCR

    data = load_split(root, "heldout", subsets, images)
    base = OCR(backend=backend, threads=threads, models=models)
    runners = {"det": base.detector.runner, "rec": base.recognizer.runner,
               "cls": base.classifier.runner if base.classifier else None}
    new = dataclasses.asdict(base.options.det)  # the defaults, with the model set's own (PP-OCRv6: mean/std 0.5)
    readers: dict[str, Reader] = {}
    settings = {"paddleocr": PADDLEOCR, "rapidocr-settings": RAPIDOCR, "new": {}}
    if models != "ppocrv4":  # the old defaults of another generation keep that generation's own normalisation
        settings["paddleocr"] = {k: v for k, v in PADDLEOCR.items() if k not in ("mean", "std")}
    for name in contestants:
        if name in settings:
            options = dataclasses.replace(base.options, det=det_options(settings[name], base.options.det))
            readers[name] = pipeline_reader(OCRPipeline.from_runners(options=options, **runners))
        elif name == "rapidocr-paddle" and with_peer and models == "ppocrv4":  # it ships PP-OCRv4 only
            try:
                readers[name] = rapidocr_paddle_reader(threads)
            except ImportError as exc:
                log(f"rapidocr-paddle skipped: {exc}")
    results = {}
    for name, read in readers.items():
        t = time.perf_counter()
        results[name] = score_subsets(read, data, warmup=True)
        log(f"{name}: mean {mean_accuracy(results[name]):.4f} ({time.perf_counter() - t:.0f} s) " +
            " ".join(f"{k}={v['char_accuracy']:.3f}" for k, v in results[name].items()))
    return {"split": "heldout", "backend": backend, "models": models, "threads": threads,
            "new_det": {k: v for k, v in new.items()}, "results": results}


def markdown(report: dict[str, Any]) -> str:
    res = report["results"]
    names = list(res)
    subsets = list(next(iter(res.values())))
    head = "| subset | pages | lines | " + " | ".join(f"{n} acc." for n in names) + " | " + \
        " | ".join(f"{n} s/page" for n in names) + " |"
    rows = [head, "|" + " --- |" * (3 + 2 * len(names))]
    for s in subsets + ["mean"]:
        if s == "mean":
            accs = [f"**{mean_accuracy(res[n]):.4f}**" for n in names]
            secs = [f"{np.mean([v['s_per_page'] for v in res[n].values()]):.2f}" for n in names]
            rows.append(f"| mean of subsets | | | {' | '.join(accs)} | {' | '.join(secs)} |")
            continue
        first = res[names[0]][s]
        accs = [f"{res[n][s]['char_accuracy']:.4f}" for n in names]
        secs = [f"{res[n][s]['s_per_page']:.2f}" for n in names]
        rows.append(f"| {s} | {first['pages']} | {first['lines']} | {' | '.join(accs)} | {' | '.join(secs)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppdeploy.bench.ocr_defaults", description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("tune", "compare"))
    parser.add_argument("--root", type=Path, default=None, help="where the splits are generated "
                        "(default: <cache>/ocr-eval)")
    parser.add_argument("--images", type=int, default=None, help="at most this many images per subset")
    parser.add_argument("--subsets", default=None, help=f"comma-separated, of: {','.join(s.name for s in SUBSETS)}")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--backend", default="onnxruntime", help="compare: the engine of ppdeploy's pipelines")
    parser.add_argument("--models", default="ppocrv4", help="compare: ppocrv4 or ppocrv6")
    parser.add_argument("--no-peer", action="store_true", help="compare: leave rapidocr-paddle out")
    parser.add_argument("--contestants", default=",".join(CONTESTANTS), help="compare: which to run")
    parser.add_argument("--resume", type=Path, default=None, help="tune: keep results in this JSON between runs")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON report here (and .md beside it)")
    args = parser.parse_args(argv)
    root = args.root or default_eval_root()
    subsets = args.subsets.split(",") if args.subsets else None
    if args.mode == "tune":
        report = tune(root, images=args.images, subsets=subsets, threads=args.threads, resume=args.resume)
        print("chosen:", json.dumps(report["chosen"], default=str))
        print("vs paddleocr per subset:", json.dumps({k: round(v, 4) for k, v in report["chosen_vs_paddleocr"].items()}))
    else:
        report = compare(root, images=args.images, subsets=subsets, threads=args.threads,
                         with_peer=not args.no_peer, backend=args.backend, models=args.models,
                         contestants=tuple(args.contestants.split(",")))
        print(markdown(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
        if args.mode == "compare":
            args.out.with_suffix(".md").write_text(markdown(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
