"""`ppdeploy export triton MODEL --out REPO`: write a Triton Inference Server model repository."""
from __future__ import annotations

import argparse
from pathlib import Path

from ppdeploy.core.errors import ConfigError


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="hand a model to another serving engine (Triton)")
    targets = parser.add_subparsers(dest="target", metavar="TARGET")
    triton = targets.add_parser(
        "triton", help="write a Triton Inference Server model repository",
        description="Write <name>/config.pbtxt and <name>/1/model.onnx (or per-GPU model_smXY.plan) for MODEL, "
                    "validated with Triton's own model-config schema. MODEL is a bundled model name, a Paddle "
                    "model dir, an .onnx file, a ppdeploy model repository (folders with config.yaml: OCR "
                    "pipelines become a Python-backend model), or 'ppocr' for the bundled PP-OCRv4 system.",
    )
    triton.add_argument("model", metavar="MODEL")
    triton.add_argument("--out", required=True, type=Path, help="model repository folder to write into")
    triton.add_argument("--name", help="model name in the repository (default: from MODEL)")
    triton.add_argument("--backend", choices=["onnxruntime", "tensorrt"], default="onnxruntime")
    triton.add_argument("--max-batch-size", type=int, default=None,
                        help="Triton's max_batch_size; 0 turns its batching off (default 8, or config.yaml's)")
    triton.add_argument("--max-queue-delay-us", type=int, default=None,
                        help="dynamic batcher delay in microseconds (default 100, or config.yaml's)")
    triton.add_argument("--preferred-batch-size", type=int, action="append", default=None, metavar="N")
    triton.add_argument("--instance-kind", choices=["auto", "cpu", "gpu"], default="auto")
    triton.add_argument("--instances", type=int, default=None, help="model instances per device (default 1)")
    triton.add_argument("--plan", action="append", default=[], metavar="CC=FILE",
                        help="--backend tensorrt: engine built on a GPU of compute capability CC (e.g. 9.0=h100.plan); "
                             "repeat for each GPU type")
    triton.add_argument("--ort-tensorrt", choices=["fp32", "fp16"], default=None,
                        help="--backend onnxruntime: let ONNX Runtime's TensorRT provider build engines on the GPU")
    triton.set_defaults(handler=run_triton)
    parser.set_defaults(handler=lambda args: parser.print_help() or 1)


def parse_plans(items: list[str]) -> dict[str, Path]:
    plans: dict[str, Path] = {}
    for item in items:
        cc, sep, path = item.partition("=")
        if not sep or not cc or not path:
            raise ConfigError(f"--plan takes CC=FILE (e.g. 9.0=model_h100.plan), got '{item}'")
        plans[cc.strip()] = Path(path)
    return plans


def run_triton(args: argparse.Namespace) -> int:
    from ppdeploy.export import triton

    overrides = {
        "backend": args.backend,
        "max_batch_size": args.max_batch_size,
        "max_queue_delay_us": args.max_queue_delay_us,
        "preferred_batch_sizes": tuple(args.preferred_batch_size) if args.preferred_batch_size else None,
        "instance_kind": args.instance_kind,
        "instance_count": args.instances,
        "plans": parse_plans(args.plan),
        "ort_tensorrt": args.ort_tensorrt,
    }
    exported = triton.export(args.model, args.out, name=args.name,
                             overrides={k: v for k, v in overrides.items() if v is not None})
    for model in exported:
        config = model.config
        batching = f"max_batch_size {config.max_batch_size}" if config.max_batch_size else "no batching"
        print(f"{model.directory}  ({config.backend}, {batching})")
    print(f"validated {len(triton.validate_repository(args.out))} model(s) with Triton's schema; serve with:\n"
          f"  tritonserver --model-repository {args.out.resolve()}")
    return 0
