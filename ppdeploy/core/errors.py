"""Every error ppdeploy raises on purpose derives from PPDeployError.

The CLI turns these into one-line messages (exit code 2) instead of tracebacks; anything else is a bug.
"""


class PPDeployError(Exception):
    """Base class: a problem the user can act on. ``hint`` says what to try."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint

    def __str__(self) -> str:  # the hint travels with the message everywhere it is printed
        base = super().__str__()
        return f"{base}\n  hint: {self.hint}" if self.hint else base


class SourceError(PPDeployError):
    """The model the user pointed at is missing, unreadable or of an unknown format."""


class ConversionError(PPDeployError):
    """Paddle → ONNX conversion, or the checks after it, failed."""


class BackendUnavailable(PPDeployError):
    """A backend cannot run on this machine (not installed, no GPU, ...)."""


class BuildError(PPDeployError):
    """A backend was available but could not build or load an engine for this model."""


class InputError(PPDeployError, ValueError):
    """Inference input does not match the model (name, dtype, rank, fixed dim, profile range)."""


class ImageError(InputError):
    """An image could not be decoded or is outside the accepted size limits."""


class AccuracyError(PPDeployError):
    """An optimized model disagrees with its reference beyond the allowed tolerance."""


class ConfigError(PPDeployError):
    """A model config (config.yaml) is invalid."""
