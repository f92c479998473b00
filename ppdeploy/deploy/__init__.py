"""Deployment: any model -> a Runner on the best backend that works here (load.py), the fallback chain
(select.py) and the model prepared once per call, with the INT8 quantizer choice (prepared.py)."""
from ppdeploy.deploy.load import Deployment, load_model
from ppdeploy.deploy.prepared import quantizer_for
from ppdeploy.deploy.select import (
           REFERENCE_BACKEND,
           Attempt,
           chain_for,
           default_chain,
           first_runnable,
)

__all__ = ["Deployment", "load_model", "quantizer_for", "Attempt", "chain_for", "default_chain", "first_runnable",
           "REFERENCE_BACKEND"]
