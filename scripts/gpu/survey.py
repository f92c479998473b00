"""Print what the device machine has that ppdeploy's GPU paths need (one JSON object)."""
import importlib
import json
import platform
import subprocess
import sys

out = {"python": sys.version.split()[0], "platform": platform.platform()}
for mod in ("numpy", "onnx", "onnxruntime", "torch", "cupy", "cuda.bindings", "yaml", "fastapi", "starlette",
            "uvicorn", "pydantic", "multipart", "pyclipper", "shapely", "cv2", "PIL", "httpx", "prometheus_client",
            "rich", "tensorrt_rtx_bindings", "tensorrt", "onnxconverter_common"):
    try:
        m = importlib.import_module(mod)
        out[mod] = getattr(m, "__version__", "present")
    except Exception as exc:
        out[mod] = f"MISSING ({type(exc).__name__}: {str(exc)[:120]})"
try:
    import onnxruntime as ort

    out["ort_providers"] = ort.get_available_providers()
    out["ort_file"] = ort.__file__
except Exception:
    pass
from ppdeploy.core.device import gpu_info

out["gpu_info"] = gpu_info()
try:
    out["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
except OSError as exc:
    out["nvidia_smi"] = str(exc)
for name in ("onnxruntime-cuda", "tensorrt-rtx", "tensorrt"):
    from ppdeploy.backends import get_backend

    out[f"unavailable[{name}]"] = get_backend(name).unavailable_reason()
print(json.dumps(out, indent=1))
