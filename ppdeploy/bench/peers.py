"""The tools users would pick instead of ppdeploy for OCR, measured in the same run on the same images:
RapidOCR on Paddle Inference, on ONNX Runtime and on OpenVINO.

Each peer runs in its own virtual environment under the cache directory, created on first use, because
their pins conflict with ppdeploy's (rapidocr-openvino 1.4.4 wants openvino<=2024.0.0). A peer venv sees
ppdeploy's environment *after* its own packages (a .pth that adds the parent site-packages), so only what
differs is installed: the peer wheel with --no-deps plus its pinned runtime. The peer runs as a subprocess
(`peer_worker.py`) and prints JSON timings and texts.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ppdeploy.errors import PPDeployError

log = logging.getLogger("ppdeploy.bench.peers")

WORKER = Path(__file__).with_name("peer_worker.py")
RESULT_MARKER = "@@PPDEPLOY_PEER_RESULT@@"


@dataclass(frozen=True)
class Peer:
    name: str  # what the report calls it
    package: str  # importable module
    requirements: tuple[str, ...]  # installed --no-deps into the peer venv
    threads_key: str  # RapidOCR's per-section thread setting for this engine
    backend: str  # the inference library underneath


PEERS: dict[str, Peer] = {
    "rapidocr-paddle": Peer("rapidocr-paddle", "rapidocr_paddle", ("rapidocr-paddle==1.4.5",),
                            "cpu_math_library_num_threads", "Paddle Inference"),
    "rapidocr-onnxruntime": Peer("rapidocr-onnxruntime", "rapidocr_onnxruntime", ("rapidocr-onnxruntime==1.4.4",),
                                 "inference_num_threads", "ONNX Runtime"),
    # numpy<2 because openvino 2024.0's bindings were built against numpy 1.x.
    "rapidocr-openvino": Peer("rapidocr-openvino", "rapidocr_openvino",
                              ("rapidocr-openvino==1.4.4", "openvino==2024.0.0", "openvino-telemetry", "numpy<2"),
                              "inference_num_threads", "OpenVINO"),
}


@dataclass(frozen=True)
class OCRSettings:
    """The det/cls/rec settings that decide both speed and output; applied identically to ppdeploy and peers.

    Defaults are PaddleOCR's published ones for PP-OCRv4 (tools/infer/utility.py), which ppdeploy's OCR follows;
    `from_ocr_options` reads them from ppdeploy's own OCROptions so the two cannot drift apart.
    """

    det_limit_side_len: int = 960
    det_limit_type: str = "max"
    det_thresh: float = 0.3
    det_box_thresh: float = 0.6
    det_unclip_ratio: float = 1.5
    det_use_dilation: bool = False
    det_score_mode: str = "fast"
    det_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    det_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    use_cls: bool = True
    cls_thresh: float = 0.9
    cls_batch_size: int = 6
    rec_batch_size: int = 6
    drop_score: float = 0.5

    @classmethod
    def from_ocr_options(cls, options: Any, use_cls: bool = True) -> "OCRSettings":
        d, c, r = options.det, options.cls, options.rec
        return cls(d.limit_side_len, d.limit_type, d.thresh, d.box_thresh, d.unclip_ratio, d.use_dilation,
                   d.score_mode, tuple(d.mean), tuple(d.std), use_cls, c.thresh, c.batch_size, r.batch_size,
                   options.drop_score)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rapidocr_overrides(settings: OCRSettings, threads: int | None, peer: Peer) -> dict[str, dict[str, Any]]:
    """RapidOCR config sections that make it run the same settings as ppdeploy's OCR."""
    t = threads if threads else -1
    return {
        "Global": {
            "text_score": settings.drop_score,
            "use_cls": settings.use_cls,
            # RapidOCR shrinks pages above 2000 px and letterboxes very wide ones before detection; PaddleOCR
            # does neither, so turn both off (the det resize is the one that matters).
            "max_side_len": 100000,
            "width_height_ratio": -1,
            peer.threads_key: t,
        },
        "Det": {
            "limit_side_len": settings.det_limit_side_len,
            "limit_type": settings.det_limit_type,
            "thresh": settings.det_thresh,
            "box_thresh": settings.det_box_thresh,
            "unclip_ratio": settings.det_unclip_ratio,
            "use_dilation": settings.det_use_dilation,
            "score_mode": settings.det_score_mode,
            "mean": list(settings.det_mean),
            "std": list(settings.det_std),
            peer.threads_key: t,
        },
        "Cls": {"cls_thresh": settings.cls_thresh, "cls_batch_num": settings.cls_batch_size, peer.threads_key: t},
        "Rec": {"rec_batch_num": settings.rec_batch_size, peer.threads_key: t},
    }


def peer_env_dir(cache_root: Path, peer: Peer) -> Path:
    tag = "-".join(r.replace("==", "").replace("<", "lt").replace(">", "gt") for r in peer.requirements)
    return Path(cache_root) / "bench-peers" / f"py{sys.version_info.major}{sys.version_info.minor}" / tag


def _venv_python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_peer_env(cache_root: Path, peer: Peer, timeout_s: float = 600) -> Path:
    """Create (once) the peer's venv and return its python. Failure → PPDeployError with pip's last words."""
    env = peer_env_dir(cache_root, peer)
    python = _venv_python(env)
    ready = env / ".ppdeploy-ready"
    if ready.is_file() and python.exists():
        return python
    env.parent.mkdir(parents=True, exist_ok=True)
    log.info("creating the %s environment in %s", peer.name, env)
    _run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(env)], timeout_s, f"create a venv for {peer.name}")
    site_dir = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
    parent_site = sysconfig.get_paths()["purelib"]
    # `import site; site.addsitedir` (not a bare path) so the parent's own .pth files — editable installs,
    # namespace packages — are processed too; it appends, so the peer's pinned packages win.
    Path(site_dir, "zz_ppdeploy_parent_env.pth").write_text(f"import site; site.addsitedir({parent_site!r})\n")
    missing = [r for r in peer.requirements if not satisfied_here(r)]
    if missing:  # what ppdeploy's own environment already has is seen through the .pth; install only the rest
        _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet", *missing],
             timeout_s, f"install {', '.join(missing)} for {peer.name}")
    check = subprocess.run([str(python), "-c", f"import {peer.package}"], capture_output=True, text=True, timeout=timeout_s)
    if check.returncode != 0:
        raise PPDeployError(f"{peer.name} does not import in its environment: {check.stderr.strip().splitlines()[-1:]}")
    ready.write_text(json.dumps({"requirements": peer.requirements}))
    return python


def satisfied_here(requirement: str) -> bool:
    """True when ppdeploy's own environment already has a distribution meeting `requirement`."""
    from importlib import metadata

    from packaging.requirements import Requirement

    req = Requirement(requirement)
    try:
        return req.specifier.contains(metadata.version(req.name), prereleases=True)
    except metadata.PackageNotFoundError:
        return False


def _run(cmd: list[str], timeout_s: float, what: str) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise PPDeployError(f"could not {what}: timed out after {timeout_s:.0f}s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise PPDeployError(f"could not {what}: {' / '.join(tail)}", hint="peer environments need PyPI access the first time")


@dataclass
class PeerRun:
    name: str
    ok: bool
    error: str | None = None
    samples_ms: list[float] = field(default_factory=list)
    stages_ms: list[dict[str, float]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    load_s: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    peak_rss_mib: float | None = None  # whole worker process, lifetime peak


def run_peer(name: str, images: Sequence[Path], *, cache_root: Path, settings: OCRSettings, threads: int | None,
             warmup: int, min_runs: int, min_time_s: float, max_time_s: float, timeout_s: float = 1800) -> PeerRun:
    if name not in PEERS:
        raise PPDeployError(f"unknown peer '{name}'", hint=f"choose from {', '.join(PEERS)}")
    peer = PEERS[name]
    try:
        python = ensure_peer_env(cache_root, peer)
    except PPDeployError as exc:
        return PeerRun(name, False, str(exc).splitlines()[0])
    spec = {
        "package": peer.package, "images": [str(p) for p in images], "overrides": rapidocr_overrides(settings, threads, peer),
        "warmup": warmup, "min_runs": min_runs, "min_time_s": min_time_s, "max_time_s": max_time_s,
    }
    try:
        proc = subprocess.run([str(python), str(WORKER)], input=json.dumps(spec), capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return PeerRun(name, False, f"timed out after {timeout_s:.0f}s")
    payload = None
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_MARKER):
            payload = json.loads(line[len(RESULT_MARKER):])
    if payload is None:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return PeerRun(name, False, f"worker exited {proc.returncode} without a result: {' / '.join(tail)}")
    if not payload.get("ok"):
        log.debug("%s traceback: %s", name, payload.get("traceback"))
        return PeerRun(name, False, payload.get("error"))
    return PeerRun(name, True, None, payload["samples_ms"], payload["stages_ms"], payload["outputs"],
                   payload.get("versions", {}), payload.get("load_s"), payload.get("config", {}),
                   payload.get("peak_rss_mib"))

