"""Runs one paddle2onnx export in a child process: `python -m ppdeploy.convert.worker ARGS_JSON`.

A child process because (a) the legacy route needs paddle2onnx 1.3.1 from a private path, which cannot share
an interpreter with the 2.x that PIR needs, and (b) paddle2onnx aborts the process on some unsupported ops;
in a child that becomes an error message instead of a dead server. Prints one JSON line on success.
"""
import json
import sys


def main() -> int:
    args = json.loads(sys.argv[1])
    import paddle2onnx

    paddle2onnx.export(
        args["model_file"], args["params_file"], save_file=args["save_file"], opset_version=args["opset"],
        auto_upgrade_opset=False, enable_onnx_checker=True, enable_optimize=True, verbose=True,
        # a fixed opset is what the user asked for; auto-upgrade would silently change it
    )
    print("PPDEPLOY_RESULT " + json.dumps({"paddle2onnx": paddle2onnx.__version__, "file": paddle2onnx.__file__}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
