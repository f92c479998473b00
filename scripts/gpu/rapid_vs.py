"""Device run (issue 19 §3): OCR pages/s on one GPU, ppdeploy against rapidocr 3.10 with `use_cuda`, per model
generation, on the 24 synthetic pages, same machine, same onnxruntime-gpu (the carried 1.31.1).

  PP-OCRv4: rapidocr 3.10 driving the carried PP-OCRv4 ONNX files (Det/Rec/Cls.model_path, the dictionary file)
            vs ppdeploy `OCR(backend="onnxruntime-cuda")` on the same files.
  PP-OCRv6: rapidocr 3.10 with its bundled PP-OCRv6 small det/rec + mobile v2.0 cls (its defaults) vs ppdeploy on
            the same three ONNX files (dictionary read from the rec model's metadata).
Each pipeline runs with its own defaults (rapidocr: det short side >= 736, mean/std 0.5, box 0.5, unclip 1.6,
dilation; ppdeploy: PaddleOCR 2.x, long side <= 960), and ppdeploy also with rapidocr's det settings ("rapid
settings"). ppdeploy's rec/cls batch options come from ocr_profile.py's best (/tmp/gpu-carry/ocr_best_opts.json on
a warm machine) when present, else the defaults. A pass stops after RAPID_PASS_CAP_S seconds (rapidocr's single ORT
session per model re-plans cuDNN on every new shape): pages/s then counts the pages done.

Needs the rapidocr wheel and its missing deps (omegaconf, colorlog) in .gpu-carry/whl-rapid (installed to /tmp/site).
Writes $OUT/rapid_vs.json; prints a table last.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ONNX = Path(os.environ.get("PPDEPLOY_TEST_ONNX_DIR", ".gpu-carry/onnx"))
PAGES = next(Path(os.environ.get("PPDEPLOY_TEST_PAGES", ".gpu-carry/pages")).glob("synth-*"))
OUT = Path(os.environ.get("OUT", "."))
DICT = os.environ.get("E2E_DICT")
USE_CUDA = os.environ.get("E2E_BACKEND", "onnxruntime-cuda") == "onnxruntime-cuda"
BACKEND = "onnxruntime-cuda" if USE_CUDA else "onnxruntime"
CAP_S = float(os.environ.get("RAPID_PASS_CAP_S", 30))
PASSES = int(os.environ.get("RAPID_PASSES", 2))
ONLY = set(filter(None, os.environ.get("RAPID_ONLY", "").split(",")))
RESULTS: dict = {"backend": BACKEND, "rows": []}
RAPID_DET = {"det_limit_side_len": 736, "det_limit_type": "min", "det_mean": (0.5, 0.5, 0.5),
             "det_std": (0.5, 0.5, 0.5), "det_box_thresh": 0.5, "det_unclip_ratio": 1.6, "det_use_dilation": True}


def save() -> None:
    (OUT / "rapid_vs.json").write_text(json.dumps(RESULTS, indent=1, default=str))


def items():
    from ppdeploy.tasks.ocr.dataset import read_labelled_folder

    found = read_labelled_folder(PAGES)
    return found[:int(os.environ["RAPID_PAGES"])] if os.environ.get("RAPID_PAGES") else found


def char_accuracy(preds, labelled) -> float:
    from ppdeploy.tasks.ocr.metrics import score_dataset

    gts = [[(line.text, line.box) for line in item.lines] for item in labelled]
    return round(score_dataset(preds, gts).char_accuracy, 4)


def measure(label: str, predict, labelled, meta: dict) -> None:
    """predict(path) -> list of (text, box); PASSES passes, each capped at CAP_S seconds."""
    row = {"label": label, **meta, "passes": []}
    for i in range(PASSES):
        preds, t = [], time.perf_counter()
        for item in labelled:
            preds.append(predict(item.path))
            if time.perf_counter() - t > CAP_S:
                break
        seconds = time.perf_counter() - t
        p = {"pages": len(preds), "pages_per_s": round(len(preds) / seconds, 2)}
        if len(preds) == len(labelled):
            p["char_acc"] = char_accuracy(preds, labelled)
        row["passes"].append(p)
        print(f"  {label:52s} pass {i}: {p['pages_per_s']:7.2f} pages/s over {p['pages']} pages  "
              f"acc {p.get('char_acc')}", flush=True)
    RESULTS["rows"].append(row)
    save()


def rapid_engine(params: dict):
    from rapidocr import RapidOCR

    base = {"EngineConfig.onnxruntime.use_cuda": USE_CUDA, "Global.log_level": "warning"}
    return RapidOCR(params={**base, **params})


def ocr_version(name: str):
    from rapidocr import OCRVersion

    return OCRVersion(name)


def rapid_predict(engine):
    def predict(path):
        res = engine(str(path))
        if res.boxes is None:
            return []
        return [(t, np.asarray(b).astype(np.int32).tolist()) for b, t, s in zip(res.boxes, res.txts, res.scores)]
    return predict


def providers(engine) -> dict:
    out = {}
    for stage in ("text_det", "text_cls", "text_rec"):
        obj = getattr(engine, stage, None)
        sess = getattr(getattr(obj, "session", None), "session", None)
        out[stage] = sess.get_providers() if sess is not None else None
    return out


def ppdeploy_predict(ocr):
    def predict(path):
        return [(line.text, line.box) for line in ocr.predict(path).lines]
    return predict


def ppdeploy_ocr(det: Path, rec: Path, cls: Path, dictionary: str | None, **options):
    from ppdeploy.tasks.ocr.builder import OCR

    kw = {"rec_dictionary": dictionary} if dictionary else {}
    return OCR(backend=BACKEND, det_model=str(det), rec_model=str(rec), cls_model=str(cls), **kw, **options)


def metadata_dictionary(rec: Path) -> str:
    import onnx

    model = onnx.load(str(rec), load_external_data=False)
    chars = next(p.value for p in model.metadata_props if p.key == "character")
    path = Path(tempfile.mkdtemp()) / "dict.txt"
    path.write_text(chars if chars.endswith("\n") else chars + "\n", encoding="utf-8")
    return str(path)


def main() -> int:
    import importlib.util

    from ppdeploy.core.device import gpu_info

    RESULTS["gpu"] = gpu_info()
    labelled = items()
    best_file = Path("/tmp/gpu-carry/ocr_best_opts.json")
    best = json.loads(best_file.read_text()) if best_file.is_file() else {}
    RESULTS["ppdeploy_batch_options"] = best
    rapid_dir = Path(importlib.util.find_spec("rapidocr").origin).parent / "models"
    v4 = {"det": ONNX / "ppocrv4-det.onnx", "rec": ONNX / "ppocrv4-rec.onnx", "cls": ONNX / "ppocr-cls.onnx"}
    v6 = {"det": rapid_dir / "PP-OCRv6_det_small.onnx", "rec": rapid_dir / "PP-OCRv6_rec_small.onnx",
          "cls": rapid_dir / "ch_ppocr_mobile_v2.0_cls_mobile.onnx"}
    v6_dict = metadata_dictionary(v6["rec"])
    import onnxruntime

    RESULTS["onnxruntime"] = {"version": onnxruntime.__version__, "file": onnxruntime.__file__,
                              "available": onnxruntime.get_available_providers()}

    def want(key: str) -> bool:
        return not ONLY or key in ONLY

    for gen, files, dictionary in (("PP-OCRv4", v4, DICT), ("PP-OCRv6", v6, v6_dict)):
        if want(f"rapid-{gen}"):
            params = {} if gen == "PP-OCRv6" else {
                "Det.model_path": str(files["det"]), "Rec.model_path": str(files["rec"]),
                "Cls.model_path": str(files["cls"]), "Rec.rec_keys_path": dictionary,
                "Det.ocr_version": ocr_version("PP-OCRv4"), "Rec.ocr_version": ocr_version("PP-OCRv4")}
            t = time.perf_counter()
            try:
                engine = rapid_engine(params)
                predict = rapid_predict(engine)
                predict(labelled[0].path)  # loads the three models (rapidocr loads lazily)
                meta = {"pipeline": "rapidocr 3.10.0", "generation": gen, "load_s": round(time.perf_counter() - t, 1),
                        "providers": providers(engine)}
                print(f"== rapidocr {gen}: providers {meta['providers']}", flush=True)
                measure(f"rapidocr 3.10 use_cuda={USE_CUDA} {gen}", predict, labelled, meta)
            except Exception as exc:  # noqa: BLE001 - recorded
                RESULTS["rows"].append({"label": f"rapidocr {gen}", "error": f"{type(exc).__name__}: {exc}"[:600]})
                print("rapidocr failed:", exc, flush=True)
                save()
        if want(f"ppdeploy-{gen}"):
            for label, options in (("defaults", {}), ("rapid det settings", RAPID_DET)):
                t = time.perf_counter()
                ocr = ppdeploy_ocr(files["det"], files["rec"], files["cls"], dictionary, **options, **best)
                meta = {"pipeline": "ppdeploy", "generation": gen, "options": {**options, **best},
                        "rec_head": ocr.deployments["rec"].head, "load_s": round(time.perf_counter() - t, 1)}
                measure(f"ppdeploy {BACKEND} {gen} {label}{' + ' + json.dumps(best) if best else ''}",
                        ppdeploy_predict(ocr), labelled, meta)
                ocr.close()
    print(f"\n{'pipeline':62s} {'cold':>7s} {'warm':>7s} {'acc':>7s}")
    for r in RESULTS["rows"]:
        if "passes" not in r:
            print(f"{r['label']:62s} ERROR {r.get('error', '')[:80]}")
            continue
        ps = r["passes"]
        warm = max(p["pages_per_s"] for p in ps[1:]) if len(ps) > 1 else None
        print(f"{r['label']:62s} {ps[0]['pages_per_s']:7.2f} {warm if warm is not None else '':>7} "
              f"{ps[-1].get('char_acc', ''):>7}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
