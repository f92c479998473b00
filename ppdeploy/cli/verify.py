"""`ppdeploy verify MODEL`: every backend against Paddle Inference on the same inputs; table + JSON report."""
from __future__ import annotations

from ppdeploy.cli.common import add_model_args, load_from_args


def register(sub) -> None:
    p = sub.add_parser("verify", help="compare backends with the Paddle Inference reference")
    add_model_args(p, backend_default="openvino,onnxruntime", head=False)  # compared with Paddle's own outputs
    p.add_argument("--input", "-i", nargs="*", default=[], help=".npy inputs (default: generated with --seed)")
    p.add_argument("--images", nargs="*", default=[],
                   help="image files or folders, preprocessed with --preprocess (default: the model's preprocess.yaml)")
    p.add_argument("--preprocess", default=None, help="preprocess.yaml for --images (resize, crop, mean/std, order)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="batch size of generated inputs")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--min-cosine", type=float, default=0.9999)
    p.add_argument("--json", dest="json_out", default=None, help="write the report here")
    p.set_defaults(handler=run)


def run(args) -> int:
    report = verify_model(args)
    print(report.table())
    if args.json_out:
        report.write_json(args.json_out)
        print(f"report written to {args.json_out}")
    return 0 if report.passed else 1


def verify_model(args):
    from ppdeploy.deploy.load import load_model
    from ppdeploy.deploy.select import chain_for
    from ppdeploy.deploy.verify import (
        BackendComparison,
        Tolerance,
        generate_inputs,
        load_inputs,
        verify,
    )
    from ppdeploy.source import zoo
    from ppdeploy.source.model import detect
    from ppdeploy.tasks.registry import TASKS

    source = detect(args.model)
    ref_backend = "paddle" if source.is_paddle else "onnxruntime"
    reference = load_model(args.model, backend=ref_backend, threads=args.threads, cache_dir=args.cache_dir).runner
    names, _ = chain_for(args.backend)
    runners, failures = {}, []
    for name in names:
        try:
            runners[name] = load_from_args(args, backend=name).runner
        except Exception as exc:  # report the backend as failed, keep verifying the others
            failures.append(BackendComparison(name, error=str(exc).splitlines()[0][:300]))
    if args.input:
        feeds = load_inputs(args.input, reference.io)
    elif args.images:
        feeds = {reference.io.inputs[0].name: _image_batch(args.images, args.preprocess, source.directory)}
    else:
        example = None
        if args.model in zoo.MODELS:
            shape = (args.batch,) + zoo.MODELS[args.model].example_shape[1:]
            example = {reference.io.inputs[0].name: shape}
        elif args.batch != 1:
            example = {s.name: (args.batch,) + tuple(d or 224 for d in s.shape[1:]) for s in reference.io.inputs}
        feeds = generate_inputs(reference.io, seed=args.seed, shapes=example)
    tol = Tolerance(args.atol, args.rtol, args.min_cosine)
    unordered = set()  # e.g. a detector's NMS rows: compared as a set
    for _, task in TASKS.items():
        if task.role_of(args.model) is not None:
            unordered |= task.unordered_outputs(reference.io)
            if not (args.input or args.images):
                feeds = task.example_feeds(reference.io, feeds)
    report = verify(runners, reference, feeds, tolerance=tol, model=source.name, reference_name=ref_backend,
                    unordered=unordered)
    report.backends.extend(failures)
    return report


def _image_batch(items, preprocess_file, model_dir):
    """Real images through the model's declared preprocessing: verification on the user's own data."""
    from pathlib import Path

    import numpy as np

    from ppdeploy.core.errors import PPDeployError
    from ppdeploy.tasks.classification.task import (
        PREPROCESS_FILE,
        PreprocessConfig,
        preprocess_image,
    )
    from ppdeploy.tasks.image_io import load_image

    cfg_path = Path(preprocess_file) if preprocess_file else model_dir / PREPROCESS_FILE
    if not cfg_path.is_file():
        raise PPDeployError(f"--images needs a preprocessing config; {cfg_path} not found",
                            hint="pass --preprocess preprocess.yaml (resize_short, crop_size, mean, std, channel_order)")
    cfg = PreprocessConfig.from_file(cfg_path)
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
    files = []
    for item in items:
        path = Path(item)
        files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes) if path.is_dir() else [path])
    if not files:
        raise PPDeployError(f"no images found in {items}")
    return np.stack([preprocess_image(load_image(f), cfg) for f in files])
