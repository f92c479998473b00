"""`ppdeploy run MODEL --input x.npy`: load (cached) and run once; prints output summaries, saves .npz."""
from __future__ import annotations

import numpy as np

from ppdeploy.cli.common import add_model_args, load_from_args, print_json
from ppdeploy.core.errors import PPDeployError


def register(sub) -> None:
    p = sub.add_parser("run", help="run a model once on .npy inputs (or generated ones)")
    add_model_args(p)
    p.add_argument("--input", "-i", nargs="*", default=[], help="x.npy files in input order, name=file.npy, or one .npz")
    p.add_argument("--seed", type=int, default=0, help="seed for generated inputs when --input is not given")
    p.add_argument("--save", default=None, help="write all outputs to this .npz")
    p.add_argument("--json", action="store_true", help="machine-readable summary")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ppdeploy.deploy.trial import describe
    from ppdeploy.deploy.verify import generate_inputs, load_inputs
    from ppdeploy.source import zoo

    dep = load_from_args(args)
    runner = dep.runner
    try:
        if args.input:
            feeds = load_inputs(args.input, runner.io)
        else:
            example = ({runner.io.inputs[0].name: zoo.MODELS[args.model].example_shape} if args.model in zoo.MODELS
                       else None)
            feeds = generate_inputs(runner.io, seed=args.seed, shapes=example)
        outputs = runner.infer(feeds)
    except PPDeployError:
        dep.close()
        raise
    except Exception as exc:  # the engine's own error on these inputs: one line, not a traceback
        dep.close()
        raise PPDeployError(f"{dep.backend} failed to run {dep.source.name} on inputs "
                            f"{ {k: list(v.shape) for k, v in feeds.items()} }: {describe(exc)}",
                            hint="check the inputs' shapes and values; `ppdeploy verify` compares backends") from None
    if args.save:
        np.savez(args.save, **outputs)
    summary = {**dep.summary(), "inputs": {k: list(v.shape) for k, v in feeds.items()},
               "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype), "min": float(v.min()),
                               "max": float(v.max()), "mean": float(v.mean())} for k, v in outputs.items()},
               "infer_ms": runner.last_timings}
    if args.json:
        print_json(summary)
    else:
        print(f"{dep.source.name}: backend {dep.backend} ({dep.precision}), "
              f"{'cache hit: no conversion or build' if dep.cache_hit else 'built now'}; "
              f"timings {summary['timings_s']}")
        for k, v in summary["outputs"].items():
            print(f"  {k}: {v['dtype']}{v['shape']} min={v['min']:.4g} max={v['max']:.4g} mean={v['mean']:.4g}")
        print(f"  infer: {runner.last_timings.get('infer', 0):.2f} ms")
    dep.close()
    return 0
