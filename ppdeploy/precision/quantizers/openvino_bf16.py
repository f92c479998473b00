"""NNCF's INT8 IR (quantizers/openvino.py) with the ops NNCF left unquantized run at BF16 (CPUs with
avx512_bf16/AMX), judged by the gate that way."""
from __future__ import annotations

from ppdeploy.backends.openvino import quantize as nncf_int8
from ppdeploy.precision.quantizer import Quantizer
from ppdeploy.precision.quantizers import openvino

QUANTIZER = Quantizer("openvino-bf16", openvino.FORMAT, openvino.candidates, openvino.save, nncf_int8.available,
                      openvino.region_nodes, methods=nncf_int8.METHODS, run_precision="bf16",
                      version=nncf_int8.VERSION, libraries=nncf_int8.LIBRARIES)
