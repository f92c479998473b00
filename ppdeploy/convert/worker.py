"""Runs one paddle2onnx export in a child process: `python -m ppdeploy.convert.worker ARGS_JSON`.

A child process because (a) the legacy route needs paddle2onnx 1.3.1 from a private path, which cannot share
an interpreter with the 2.x that PIR needs, and (b) paddle2onnx aborts the whole process on unsupported ops
(and the op's name, printed through an unflushed C++ stream, is lost with it). So before exporting, the worker
lists the program's ops that paddle2onnx does not declare as supported and prints them, flushed; the parent
names them if the export then dies.
"""
import json
import sys

# PIR op names -> the legacy names paddle2onnx's supported-op list uses for the same mapper.
_PIR_TO_LEGACY = {"add": "elementwise_add", "subtract": "elementwise_sub", "multiply": "elementwise_mul",
                  "divide": "elementwise_div", "maximum": "elementwise_max", "minimum": "elementwise_min",
                  "remainder": "elementwise_mod", "floor_divide": "elementwise_floordiv",
                  "elementwise_pow": "elementwise_pow", "matmul": "matmul_v2", "flatten": "flatten_contiguous_range"}
_ALWAYS_OK = {"data", "fetch", "feed", "parameter", "constant"}


def _program_ops(model_file: str) -> set[str]:
    if model_file.endswith(".json"):
        with open(model_file) as f:
            program = json.load(f)
        ops = set()
        for region in program["program"].get("regions", []):
            for block in region.get("blocks", []):
                for op in block.get("ops", []):
                    dialect, _, name = op.get("#", "").partition(".")
                    if dialect == "1" and name:  # "1." is Paddle's op dialect; "0." / "p" are builtins
                        ops.add(name)
        return ops
    from paddle.base.proto import framework_pb2

    desc = framework_pb2.ProgramDesc()
    with open(model_file, "rb") as f:
        desc.ParseFromString(f.read())
    return {op.type for block in desc.blocks for op in block.ops}


def suspects(model_file: str) -> list[str]:
    try:
        from paddle2onnx import paddle2onnx_cpp2py_export as core

        pir = model_file.endswith(".json")
        supported = set(core.get_all_supported_operators_pir() if pir else core.get_all_supported_operators())
        out = []
        for op in _program_ops(model_file):
            base = op.rstrip("_")
            if base in _ALWAYS_OK or {op, base, _PIR_TO_LEGACY.get(base, base)} & supported:
                continue
            out.append(op)
        return sorted(out)
    except Exception:  # diagnosis is best effort; the export itself decides
        return []


def main() -> int:
    args = json.loads(sys.argv[1])
    import paddle2onnx

    print("PPDEPLOY_SUSPECTS " + json.dumps(suspects(args["model_file"])), flush=True)
    paddle2onnx.export(
        args["model_file"], args["params_file"], save_file=args["save_file"], opset_version=args["opset"],
        # a fixed opset is what the user asked for; auto-upgrade would silently change it
        auto_upgrade_opset=False, enable_onnx_checker=True, enable_optimize=True, verbose=True,
    )
    print("PPDEPLOY_RESULT " + json.dumps({"paddle2onnx": paddle2onnx.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
