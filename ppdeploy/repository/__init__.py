"""The model repository: the config schema of a served model (config) and which configs to serve (resolve)."""
from ppdeploy.repository.config import (
           ModelConfig,
           check_references,
           load_config,
           load_repository,
)
from ppdeploy.repository.resolve import ServeDefaults, resolve_configs

__all__ = ["ModelConfig", "ServeDefaults", "check_references", "load_config", "load_repository",
           "resolve_configs"]
