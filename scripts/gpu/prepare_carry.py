"""Run HERE (not on the device): put what a device run needs into the git-ignored folder .gpu-carry/.

  .gpu-carry/onnx/<zoo-name>.onnx           FP32 OCR models (converted with ppdeploy's own route, cached)
  .gpu-carry/onnx/<zoo-name>.fp16.onnx      FP16 graphs with FP32 I/O (ppdeploy.precision.fp16 keep-list, or
                                            onnxconverter-common directly when that module is unavailable)
  .gpu-carry/rtx-a/, .gpu-carry/rtx-b/       TensorRT-RTX 1.7.1 (libs split in two xz parts: 234 MiB raw is more
                                            than one device call carries) + cp312 bindings wheel

Usage: python scripts/gpu/prepare_carry.py [--no-rtx]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CARRY = ROOT / ".gpu-carry"
MODELS = ("ppocrv4-det", "ppocrv4-rec", "ppocr-cls")
RTX_VERSION = "1.7.1.116"


def fp16(src: Path, dst: Path) -> str:
    """First FP16 variant (FP32 I/O) that ONNX Runtime accepts: ppdeploy's keep-list, then onnxconverter-common's
    default block list, each also with Resize kept FP32 (the converter mis-types Resize's casts on the det head)."""
    import onnx
    from onnxconverter_common.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    try:
        from ppdeploy.precision.fp16 import default_keep_ops

        keep_list = default_keep_ops()
    except ImportError:
        keep_list = None
    attempts = []
    if keep_list:
        attempts += [("ppdeploy keep-list", keep_list), ("ppdeploy keep-list + Resize", keep_list + ["Resize"])]
    attempts += [("converter default block list", list(DEFAULT_OP_BLOCK_LIST)),
                 ("converter default block list + Resize", list(DEFAULT_OP_BLOCK_LIST) + ["Resize"])]
    failures = []
    for label, block in attempts:
        try:
            out = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, op_block_list=block)
            # The converter leaves stale value_info types next to the casts it inserts (ORT then refuses the graph
            # with "Type (tensor(float)) ... does not match expected type (tensor(float16))"); ORT re-infers them.
            del out.graph.value_info[:]
            onnx.save(out, str(dst))
        except Exception as exc:
            failures.append(f"{label}: converter: {str(exc)[:100]}")
            continue
        problem = _ort_load_problem(dst)
        if problem is None:
            return label + (f" (failed first: {' | '.join(failures)})" if failures else "")
        failures.append(f"{label}: ORT rejects: {problem[:160]}")
    raise SystemExit(f"no FP16 variant of {src} loads in ONNX Runtime: {failures}")


def _ort_load_problem(path: Path) -> str | None:
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


def models() -> dict:
    from ppdeploy.convert.pipeline import to_onnx
    from ppdeploy.source.model import detect

    out = CARRY / "onnx"
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    for name in MODELS:
        src = to_onnx(detect(name)).onnx_path
        shutil.copyfile(src, out / f"{name}.onnx")
        info[name] = {"fp32": str(src), "fp16_via": fp16(src, out / f"{name}.fp16.onnx")}
    (out / "models.json").write_text(json.dumps(info, indent=2))
    return info


def rtx() -> None:
    import tensorrt_rtx_libs

    libdir = Path(tensorrt_rtx_libs.__file__).parent
    a, b = CARRY / "rtx-a", CARRY / "rtx-b"
    for d in (a, b):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    shutil.copy(libdir / "__init__.py", a / "libs_init.py")
    subprocess.run(["xz", "-T2", "-6", "-k", "-c", str(libdir / "libtensorrt_onnxparser_rtx.so.1")],
                   stdout=open(a / "parser.so.xz", "wb"), check=True)
    big = subprocess.run(["xz", "-T2", "-6", "-c", str(libdir / "libtensorrt_rtx.so.1")], capture_output=True,
                         check=True).stdout
    cut = 10 << 20  # part a rides with the 49 MiB ORT CUDA payload, part b with its 8 MiB core
    (a / "rtx.so.xz.part0").write_bytes(big[:cut])
    (b / "rtx.so.xz.part1").write_bytes(big[cut:])
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
                    "-d", str(a), f"tensorrt-rtx-cu13-bindings=={RTX_VERSION}"], check=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--no-rtx", action="store_true")
    args = parser.parse_args()
    print(json.dumps(models(), indent=2))
    if not args.no_rtx:
        rtx()
    subprocess.run(["du", "-sh", *sorted(str(p) for p in CARRY.iterdir())])
