"""The tools users would pick instead of ppdeploy for OCR, measured in the same run on the same images:
for PP-OCRv4, RapidOCR 1.4 on Paddle Inference, on ONNX Runtime and on OpenVINO; for PP-OCRv6, rapidocr 3.10 on
its ONNX Runtime and on its OpenVINO engine (one package, the engine chosen per section in its config).

Each peer runs in its own virtual environment under the cache directory, created on first use, because
their pins conflict with ppdeploy's (rapidocr-openvino 1.4.4 wants openvino<=2024.0.0). A peer venv sees
ppdeploy's environment *after* its own packages (a .pth that adds the parent site-packages), so only what
differs is installed: the peer wheel with --no-deps plus its pinned runtime. The peer runs as a long-lived
subprocess (`peer_worker.py`) that reads the image it is told to and answers with JSON timings and text.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ppdeploy.core.errors import PPDeployError

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
    models: str = "ppocrv4"  # the model generation it runs (ppdeploy.tasks.ocr.models)
    engine: str | None = None
    """rapidocr >= 3: the `engine_type` of its Det/Cls/Rec sections (its thread setting then lives in
    EngineConfig.<engine>); None for the 1.x packages, one per engine, which read it from each section."""


RAPIDOCR3 = ("rapidocr==3.10.0", "omegaconf", "antlr4-python3-runtime", "colorlog", "six", "tqdm", "requests")
PEERS: dict[str, Peer] = {
    "rapidocr-paddle": Peer("rapidocr-paddle", "rapidocr_paddle", ("rapidocr-paddle==1.4.5",),
                            "cpu_math_library_num_threads", "Paddle Inference"),
    "rapidocr-onnxruntime": Peer("rapidocr-onnxruntime", "rapidocr_onnxruntime", ("rapidocr-onnxruntime==1.4.4",),
                                 "inference_num_threads", "ONNX Runtime"),
    # numpy<2 because openvino 2024.0's bindings were built against numpy 1.x.
    "rapidocr-openvino": Peer("rapidocr-openvino", "rapidocr_openvino",
                              ("rapidocr-openvino==1.4.4", "openvino==2024.0.0", "openvino-telemetry", "numpy<2"),
                              "inference_num_threads", "OpenVINO"),
    # rapidocr 3.10's declared dependencies are listed too: --no-deps skips them, ppdeploy's environment has most.
    "rapidocr-3.10-onnxruntime": Peer("rapidocr-3.10-onnxruntime", "rapidocr", RAPIDOCR3, "intra_op_num_threads",
                                      "ONNX Runtime", "ppocrv6", "onnxruntime"),
    "rapidocr-3.10-openvino": Peer("rapidocr-3.10-openvino", "rapidocr", RAPIDOCR3, "inference_num_threads",
                                   "OpenVINO", "ppocrv6", "openvino"),
}
REFERENCES = {"ppocrv4": "rapidocr-paddle", "ppocrv6": "rapidocr-3.10-onnxruntime"}
"""Per model generation, the peer whose lines the others are compared with: PaddleOCR's own pre/post-processing on
Paddle Inference for PP-OCRv4; for PP-OCRv6, which has no Paddle-format file, rapidocr 3.10 on ONNX Runtime."""


def peers_for(models: str) -> list[str]:
    return [name for name, peer in PEERS.items() if peer.models == models]


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
    sections = {
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
    if peer.engine is not None:  # rapidocr >= 3: one engine setting per section, threads under EngineConfig
        for name in ("Global", "Det", "Cls", "Rec"):
            sections[name].pop(peer.threads_key)
        for name in ("Det", "Cls", "Rec"):
            sections[name]["engine_type"] = peer.engine
        sections["EngineConfig"] = {peer.engine: {peer.threads_key: t}}
    return sections


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


class PeerProcess:
    """One peer as a long-lived worker process (see peer_worker.py): started once, then asked to read image i
    whenever the benchmark schedules it, so peers and ppdeploy can be timed in interleaved rounds."""

    def __init__(self, name: str, images: Sequence[Path], *, cache_root: Path, settings: OCRSettings,
                 threads: int | None, timeout_s: float = 600):
        if name not in PEERS:
            raise PPDeployError(f"unknown peer '{name}'", hint=f"choose from {', '.join(PEERS)}")
        self.name = name
        self.peer = PEERS[name]
        self.timeout_s = timeout_s
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        python = ensure_peer_env(cache_root, self.peer)
        spec = {"package": self.peer.package, "images": [str(p) for p in images],
                "overrides": rapidocr_overrides(settings, threads, self.peer)}
        # stderr goes to a file, not a pipe: nobody reads it while the worker runs, and a full pipe would block it.
        self._stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([str(python), str(WORKER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1)
        self.info = self._ask(spec)

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise PPDeployError(f"{self.name} worker is gone: {self._stderr_tail()}") from None
        for line in self.proc.stdout:  # skip the peer's own logging until our reply
            if line.startswith(RESULT_MARKER):
                reply = json.loads(line[len(RESULT_MARKER):])
                if not reply.get("ok"):
                    log.debug("%s traceback: %s", self.name, reply.get("traceback"))
                    raise PPDeployError(f"{self.name}: {reply.get('error')}")
                return reply
        raise PPDeployError(f"{self.name} worker exited without answering: {self._stderr_tail()}")

    def _stderr_tail(self) -> str:
        self._stderr.seek(0)
        return " / ".join(self._stderr.read().strip().splitlines()[-3:])

    def run(self, index: int) -> dict[str, Any]:
        """Read image `index`: {wall_ms, cpu_ms, stages, lines} as measured inside the worker (no IPC in it)."""
        return self._ask({"cmd": "run", "index": index})

    def peak_rss_mib(self) -> float | None:
        return self._ask({"cmd": "stats"}).get("peak_rss_mib")

    def close(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin:
                self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self._stderr.close()
