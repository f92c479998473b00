"""The INT8 quantizers, one module each (contract: precision/quantizer.py; registered in precision/registry.py)."""
