"""OCR pipeline benchmark: pages through ppdeploy's OCR on each backend/precision, and through the RapidOCR
peers, in one run on the same images and the same det/cls/rec settings.

All pipelines are loaded side by side (peers as long-lived worker processes) and timed in interleaved
rounds, so the shared machine's drifting background load falls on all of them alike. Every reading starts
from the encoded image bytes already in memory (decode is part of the measured time for ppdeploy and peers
alike), and its CPU time is recorded next to the wall time. The texts of the first (untimed) pass are kept
so each entry's agreement with the reference (RapidOCR on Paddle Inference, the stand-in for PaddleOCR) is
reported next to its speed: a fast pipeline that reads different text is not a win.
"""
from __future__ import annotations

import gc
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ppdeploy.backends.base import default_threads
from ppdeploy.bench.offline import MeasureSettings
from ppdeploy.bench.peers import PEERS, REFERENCES, OCRSettings, PeerProcess, peers_for
from ppdeploy.bench.report import BASELINE_BACKEND, markdown_table
from ppdeploy.bench.stats import stage_means, summarize
from ppdeploy.core.cache import default_root
from ppdeploy.core.device import cpu_supports_bf16
from ppdeploy.core.errors import PPDeployError
from ppdeploy.tasks.ocr.builder import OCR, keep_fp32_for, rec_guard_precision
from ppdeploy.tasks.ocr.metrics import score_dataset
from ppdeploy.tasks.ocr.models import DEFAULT_SET, MODEL_SETS, model_set, set_options
from ppdeploy.tasks.ocr.pipeline import OCROptions

log = logging.getLogger("ppdeploy.bench.ocr")

GENERATION_LABELS = {name: s.label for name, s in MODEL_SETS.items()}


@dataclass
class OCRConfig:
    """One ppdeploy OCR configuration: a backend and precision for all stages, or a dict per stage.

    calib: per-stage calibration sets, needed for INT8 stages (passed to OCR through its per-stage load_options).
    """

    backend: str | dict[str, str]
    precision: str | dict[str, str] = "fp32"
    calib: dict[str, Any] | None = None
    name: str | None = None
    rec_guard: str | None = "auto"  # see OCR: an FP32 rec re-reads the lines a reduced-precision rec is unsure of
    rec_guard_margin: float | None = None  # None: OCR's default (tasks/ocr/guard.py DEFAULT_MARGIN)
    keep_fp32: str | dict[str, list[str]] | None = "auto"  # see OCR: "auto" keeps a BF16 detector's encoder in FP32
    models: str = DEFAULT_SET  # the model generation (OCR(models=...)); compared with that generation's peers

    @classmethod
    def parse(cls, spec: str) -> "OCRConfig":
        """'det=openvino:fp32,cls=onnxruntime,rec=openvino:bf16[,guard=off|guard=0.4][,keep_fp32=off][,models=ppocrv6]'
        (precision defaults to fp32; a number as the guard is its margin; keep_fp32=off runs a BF16 detector all in
        BF16; models picks the model generation)."""
        backend: dict[str, str] = {}
        precision: dict[str, str] = {}
        guard: str | None = "auto"
        margin: float | None = None
        keep: str | None = "auto"
        models = DEFAULT_SET
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            if key == "models" and sep:
                models = model_set(value).name
            elif key == "keep_fp32" and value in ("off", "auto"):
                keep = None if value == "off" else value
            elif key == "guard" and sep and _is_number(value):
                margin = float(value)
            elif key == "guard" and sep:
                guard = None if value == "off" else value
            elif key in ("det", "cls", "rec") and sep and value:
                backend[key], _, prec = value.partition(":")
                precision[key] = prec or "fp32"
            else:
                raise PPDeployError(f"bad OCR pipeline spec part {part!r} in {spec!r}",
                                    hint="e.g. det=openvino:fp32,cls=onnxruntime,rec=openvino:bf16,guard=off")
        return cls(backend or "auto", precision or "fp32", rec_guard=guard, rec_guard_margin=margin, keep_fp32=keep,
                   models=models)

    @property
    def label(self) -> str:
        if self.name:
            return self.name

        def part(v: Any) -> str:
            return v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items())

        rec = self.stage_precision("rec")
        guard = rec_guard_precision(self.rec_guard, rec)
        margin = f" (margin {self.rec_guard_margin:g})" if guard and self.rec_guard_margin is not None else ""
        suffix = f" + {guard.upper()} rec guard{margin}" if guard else (" (no rec guard)" if rec != "fp32" else "")

        kept = keep_fp32_for(self.keep_fp32, {s: self.stage_precision(s) for s in ("det", "cls", "rec")})
        suffix += "".join(f" + FP32 {stage} {' '.join(regions)}" for stage, regions in kept.items())
        generation = "" if self.models == DEFAULT_SET else f"{GENERATION_LABELS.get(self.models, self.models)} "
        return f"ppdeploy {generation}{part(self.backend)} {part(self.precision)}{suffix}"

    def stage_backend(self, stage: str) -> str:
        return self.backend if isinstance(self.backend, str) else self.backend.get(stage, "auto")

    def stage_precision(self, stage: str) -> str:
        return self.precision if isinstance(self.precision, str) else self.precision.get(stage, "fp32")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass
class OCREntry:
    name: str
    kind: str  # "ppdeploy" | "peer"
    backend: str
    precision: str
    ok: bool
    error: str | None = None
    pages: int = 0  # timed page runs
    latency_ms: dict[str, float] | None = None  # per page, wall clock
    cpu_ms: dict[str, float] | None = None  # per page, CPU time of the reading process
    pages_per_s: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    load_s: float | None = None
    versions: dict[str, str] = field(default_factory=dict)
    stage_backends: dict[str, str] = field(default_factory=dict)
    texts: list[list[str]] = field(default_factory=list)  # per image, first pass
    boxes: list[list[list[list[float]]]] = field(default_factory=list)  # per image and line, first pass
    agreement: dict[str, Any] | None = None  # vs the reference
    accuracy: dict[str, Any] | None = None  # vs labels, when the pages are labelled
    samples_ms: list[float] = field(default_factory=list)
    models: str = DEFAULT_SET  # the model generation it ran

    def to_dict(self, with_samples: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not with_samples:
            d.pop("samples_ms")
            d.pop("texts")
            d.pop("boxes")
        return d


def line_agreement(reference: Sequence[Sequence[str]], candidate: Sequence[Sequence[str]]) -> dict[str, Any]:
    """How many of the reference's lines the candidate read identically, per image, as multisets.

    Order-free on purpose: two pipelines may sort lines of the same row differently without reading
    anything differently.
    """
    matched = ref_total = cand_total = 0
    for ref, cand in zip(reference, candidate):
        ref_c, cand_c = Counter(ref), Counter(cand)
        matched += sum((ref_c & cand_c).values())
        ref_total += sum(ref_c.values())
        cand_total += sum(cand_c.values())
    return {
        "reference_lines": ref_total,
        "candidate_lines": cand_total,
        "matched_lines": matched,
        "line_agreement": round(matched / ref_total, 4) if ref_total else None,
    }


Lines = list[tuple[str, Any]]  # (text, box) per line


@dataclass
class Reading:
    wall_ms: float
    cpu_ms: float  # CPU time of the reading process (all its threads): less sensitive to other jobs than wall time
    stages: dict[str, float]
    lines: Lines


class _PpdeployContestant:
    def __init__(self, config: OCRConfig, images: Sequence[bytes], threads: int | None, options: dict[str, Any]):
        self.entry = OCREntry(config.label, "ppdeploy", _flat(config.backend), _flat(config.precision), False,
                              models=config.models)
        self.images = images
        t0 = time.perf_counter()
        calib = {s: {"calib": c} for s, c in (config.calib or {}).items() if config.stage_precision(s) != "fp32"}
        self.ocr = OCR(backend=config.backend, precision=config.precision, threads=threads, models=config.models,
                       rec_guard=config.rec_guard, load_options=calib, keep_fp32=config.keep_fp32, **options,
                       **({"rec_guard_margin": config.rec_guard_margin} if config.rec_guard_margin is not None else {}))
        self.entry.load_s = round(time.perf_counter() - t0, 3)
        self.entry.stage_backends = dict(self.ocr.backends)

    def read(self, index: int) -> Reading:
        wall0, cpu0 = time.perf_counter(), time.process_time()
        result = self.ocr.predict(self.images[index])
        wall_ms = (time.perf_counter() - wall0) * 1e3
        cpu_ms = (time.process_time() - cpu0) * 1e3
        stages = dict(result.timings)
        if self.ocr.guarded:  # every page, so the mean is lines re-read per page
            stages["guarded_lines"] = float(result.guarded_lines)
        return Reading(wall_ms, cpu_ms, stages, [(line.text, line.box) for line in result.lines])

    def finish(self) -> None:
        self.ocr.close()


class _PeerContestant:
    def __init__(self, name: str, image_paths: Sequence[Path], threads: int | None, ocr_settings: OCRSettings,
                 cache_root: Path):
        peer = PEERS[name]
        self.entry = OCREntry(name, "peer", peer.backend, _peer_precision(peer.backend), False, models=peer.models)
        self.proc = PeerProcess(name, image_paths, cache_root=cache_root, settings=ocr_settings, threads=threads)
        self.entry.load_s = round(self.proc.info.get("load_s", 0.0), 3)
        self.entry.versions = self.proc.info.get("versions", {})

    def read(self, index: int) -> Reading:
        r = self.proc.run(index)
        return Reading(r["wall_ms"], r["cpu_ms"], r["stages"], [(l["text"], l["box"]) for l in r["lines"]])

    def finish(self) -> None:
        try:
            self.entry.peak_rss_mib = self.proc.peak_rss_mib()
        finally:
            self.proc.close()


def _run_interleaved(contestants: list[Any], n_images: int, settings: MeasureSettings) -> None:
    """A first untimed pass over every page (warm-up; its text is each contestant's result), then timed rounds in
    which every contestant reads one page, the order rotating per round, until each has at least `min_runs`
    pages and `min_time_s` of timed reading (or `max_time_s` each has passed). Interleaving spreads the
    machine's drifting background load over all contestants instead of charging it to whoever ran last."""
    first: dict[int, list[Lines]] = {id(c): [] for c in contestants}
    for c in contestants:
        for i in range(n_images):
            first[id(c)].append(c.read(i).lines)
        for _ in range(max(0, settings.warmup - 1)):
            c.read(0)
    readings: dict[int, list[Reading]] = {id(c): [] for c in contestants}
    start = time.perf_counter()
    rnd = 0
    while True:
        k = rnd % len(contestants)
        for c in contestants[k:] + contestants[:k]:
            readings[id(c)].append(c.read(rnd % n_images))
        rnd += 1
        enough = all(len(r) >= max(settings.min_runs, n_images) and sum(x.wall_ms for x in r) >= settings.min_time_s * 1e3
                     for r in readings.values())
        if enough or time.perf_counter() - start >= settings.max_time_s * len(contestants):
            break
    for c in contestants:
        rs = readings[id(c)]
        _fill(c.entry, [r.wall_ms for r in rs], [r.stages for r in rs], first[id(c)], [r.cpu_ms for r in rs])


def _peer_precision(backend: str) -> str:
    if backend != "OpenVINO":
        return "fp32"

    # OpenVINO's CPU plugin lowers to bf16 by itself where the CPU has it, unless told otherwise (RapidOCR does not).
    return "runtime default (bf16 on this CPU)" if cpu_supports_bf16() else "runtime default (fp32 on this CPU)"


def _fill(entry: OCREntry, samples: list[float], stages: list[dict[str, float]], lines: list[Lines],
          cpu_ms: list[float]) -> None:
    entry.ok = True
    entry.cpu_ms = summarize(cpu_ms).to_dict()
    entry.pages = len(samples)
    entry.samples_ms = samples
    entry.latency_ms = summarize(samples).to_dict()
    entry.pages_per_s = round(len(samples) / (sum(samples) / 1e3), 3)
    entry.stages_ms = stage_means(stages)
    entry.texts = [[t for t, _ in page] for page in lines]
    entry.boxes = [[[[float(x), float(y)] for x, y in box] for _, box in page] for page in lines]


def label_accuracy(entry: OCREntry, labels: Sequence[Any]) -> dict[str, Any]:
    """Character accuracy, exact lines and detection P/R against labelled pages (ppdeploy.tasks.ocr.metrics)."""
    preds = [list(zip(t, b)) for t, b in zip(entry.texts, entry.boxes)]
    gts = [[(line.text, line.box) for line in item.lines] for item in labels]
    m = score_dataset(preds, gts)
    d = m.to_dict()
    return {k: d[k] for k in ("char_accuracy", "line_exact_match", "det_precision", "det_recall", "gt_lines")}


def _flat(v: str | dict[str, str]) -> str:
    return v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items())


def bench_ocr(image_paths: Sequence[Path], configs: Sequence[OCRConfig], *, labels: Sequence[Any] | None = None,
              peers: Sequence[str] | None = None,
              threads: int | None = None, settings: MeasureSettings = MeasureSettings(warmup=1, min_runs=4, min_time_s=5.0),
              cache_root: Path | None = None, ocr_options: dict[str, Any] | None = None,
              on_entry: Callable[[OCREntry], None] | None = None) -> dict[str, Any]:
    """Run ppdeploy configs and peers over the same images; return a JSON-ready dict with agreement filled in.
    peers: None runs those of every model generation the configs use (ppdeploy.bench.peers.peers_for). Each entry's
    agreement is against its own generation's reference (REFERENCES)."""
    if peers is None:
        peers = [p for gen in dict.fromkeys(c.models for c in configs) for p in peers_for(gen)]
    if not image_paths:
        raise PPDeployError("no images to benchmark OCR on")
    # Everyone gets the same explicit thread count: left unset, Paddle Inference (rapidocr-paddle) would use
    # one math thread and ONNX Runtime its own guess of physical cores, which would not be a fair comparison.
    threads = threads or default_threads()
    images = [Path(p).read_bytes() for p in image_paths]
    options = dict(ocr_options or {})
    generations = list(dict.fromkeys([*(c.models for c in configs), *(PEERS[p].models for p in peers if p in PEERS)]))
    # per generation: the options its models need (PP-OCRv6 det: mean/std 0.5) under the ones given, for peers too
    settings_by_models = {gen: OCRSettings.from_ocr_options(OCROptions.from_kwargs(**set_options(gen, options)))
                          for gen in generations or [DEFAULT_SET]}
    ocr_settings = settings_by_models.get(DEFAULT_SET) or next(iter(settings_by_models.values()))
    cache_root = Path(cache_root) if cache_root else default_root()
    contestants: list[Any] = []
    entries: list[OCREntry] = []
    try:
        starters = [(name, lambda n=name: _PeerContestant(n, image_paths, threads,
                                                          settings_by_models[PEERS[n].models], cache_root))
                    for name in peers]
        starters += [(cfg.label, lambda c=cfg: _PpdeployContestant(c, images, threads, options)) for cfg in configs]
        for label, start in starters:
            try:
                contestants.append(start())
                entries.append(contestants[-1].entry)
            except Exception as exc:  # a pipeline that cannot start is a row with its reason, not a lost run
                if not isinstance(exc, PPDeployError):
                    log.exception("starting %s failed", label)
                kind = "peer" if label in PEERS else "ppdeploy"
                entries.append(OCREntry(label, kind, PEERS[label].backend if kind == "peer" else "?", "?", False,
                                        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                        models=PEERS[label].models if kind == "peer" else
                                        next(c.models for c in configs if c.label == label)))
            if on_entry:
                on_entry(entries[-1])
        if contestants:
            _run_interleaved(contestants, len(images), settings)
    finally:
        for c in contestants:
            try:
                c.finish()
            except Exception:
                log.exception("closing %s failed", c.entry.name)
        gc.collect()
    refs = {gen: _reference(entries, gen) for gen in dict.fromkeys(e.models for e in entries)}
    for e in entries:
        ref = refs.get(e.models)
        if e.ok and ref is not None:
            e.agreement = line_agreement(ref.texts, e.texts)
        if e.ok and labels is not None:
            e.accuracy = label_accuracy(e, labels)
    return {
        "images": [str(p) for p in image_paths],
        "threads": threads,
        "settings": asdict(settings),
        "ocr_settings": ocr_settings.to_dict(),
        "ocr_settings_by_models": {gen: st.to_dict() for gen, st in settings_by_models.items()},
        "reference": refs[DEFAULT_SET].name if refs.get(DEFAULT_SET) else None,
        "references": {gen: ref.name if ref else None for gen, ref in refs.items()},
        "labelled": labels is not None,
        "entries": [e.to_dict() for e in entries],
    }


def _reference(entries: Sequence[OCREntry], models: str) -> OCREntry | None:
    """The generation's reference peer; without it (PP-OCRv4 only) ppdeploy on Paddle Inference fp32, if it ran."""
    ref = next((e for e in entries if e.name == REFERENCES.get(models) and e.ok), None)
    if ref is None and models == DEFAULT_SET:
        ref = next((e for e in entries if e.kind == "ppdeploy" and e.backend == BASELINE_BACKEND
                    and e.precision == "fp32" and e.ok and e.models == models), None)
    return ref


def ocr_markdown(result: dict[str, Any]) -> str:
    entries = [e for e in result["entries"]]
    generations = list(dict.fromkeys(e.get("models", DEFAULT_SET) for e in entries))
    bases, fastest = {}, {}
    for gen in generations:  # speed-ups are against the peers running the same models
        bases[gen] = next((e for e in entries if e["name"] == REFERENCES.get(gen) and e["ok"]), None)
        ok = [e for e in entries if e["kind"] == "peer" and e["ok"] and e.get("models", DEFAULT_SET) == gen]
        fastest[gen] = min(ok, key=lambda e: e["latency_ms"]["mean"]) if ok else None
    rows = []
    for e in entries:
        base, fastest_peer = bases[e.get("models", DEFAULT_SET)], fastest[e.get("models", DEFAULT_SET)]
        if not e["ok"]:
            rows.append([e["name"], e["backend"], e["precision"], None, None, None, None, None, None, None, None, None,
                         ("rejected by its accuracy gate: " if "accuracy gate" in str(e["error"]) else "could not run: ")
                         + str(e["error"])])
            continue
        lat = e["latency_ms"]
        st = e["stages_ms"]
        if e["kind"] == "peer":
            stage_txt = ", ".join(f"{k} {st[k]:.0f}" for k in ("det", "cls", "rec") if k in st)
        else:
            keys = ("decode", "det_pre", "det_infer", "det_post", "crop", "cls", "rec_pre", "rec_infer", "rec_post",
                    "rec_guard")
            stage_txt = ", ".join(f"{k} {st[k]:.0f}" for k in keys if st.get(k))
            if "guarded_lines" in st:
                stage_txt += f" ({st['guarded_lines']:.1f} lines/page re-read by the FP32 guard)"
        agree = (e.get("agreement") or {}).get("line_agreement")
        rows.append([
            e["name"], e["backend"] if e["kind"] == "peer" else ", ".join(f"{k}:{v}" for k, v in e.get("stage_backends", {}).items()),
            e["precision"], e["pages"], lat["mean"] / 1e3, lat["p90"] / 1e3,
            e["cpu_ms"]["mean"] / 1e3 if e.get("cpu_ms") else None, e["pages_per_s"],
            round(base["latency_ms"]["mean"] / lat["mean"], 2) if base else None,
            round(fastest_peer["latency_ms"]["mean"] / lat["mean"], 2) if fastest_peer else None,
            f"{agree * 100:.1f} %" if agree is not None else None,
            f"{e['accuracy']['char_accuracy'] * 100:.2f} %" if e.get("accuracy") else None, stage_txt,
        ])
    refs = result.get("references") or {DEFAULT_SET: result.get("reference")}
    several = len(generations) > 1
    named = [f"{GENERATION_LABELS.get(g, g)}: {fastest[g]['name']}" if several else fastest[g]["name"]
             for g in generations if fastest[g]]
    fastest_txt = f"fastest peer = {', '.join(named)}" if named else "no peer ran"
    ref_names = " / ".join(refs.get(g) or REFERENCES.get(g, "ref") for g in generations)
    lines_ref = " / ".join(refs.get(g) or "ref" for g in generations)
    per_generation = (" Each pipeline is compared with the peers running its own model generation (PP-OCRv4 or "
                      "PP-OCRv6): speed-ups and `lines =` against that generation's reference.") if several else ""
    return markdown_table(
        ["pipeline", "backend", "precision", "pages timed", "s/page mean", "s/page p90", "CPU s/page", "pages/s",
         f"× vs {ref_names}", "× vs fastest peer", f"lines = {lines_ref}", "char acc. vs labels",
         "stages (mean ms)"],
        rows) + (f"\n\n({fastest_txt}; speed-up = ratio of mean s/page, measured in interleaved rounds in this run; "
                 f"CPU s/page sums all threads of the reading process.{per_generation})")
