"""Every error ppdeploy raises on purpose derives from PPDeployError.

The CLI turns these into one-line messages (exit code 2) instead of tracebacks; anything else is a bug.
"""
import errno


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


class StorageError(PPDeployError):
    """The machine refused a write: a read-only, full or forbidden cache or output folder. Trying another backend
    would hit the same wall, so the fallback chain stops here and says which folder and what to do."""


_STORAGE_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EDQUOT}


def storage_error(exc: BaseException) -> StorageError | None:
    """`exc` as a StorageError when it is a refused write (EROFS, ENOSPC, EDQUOT, EACCES, EPERM), else None."""
    if not isinstance(exc, OSError) or exc.errno not in _STORAGE_ERRNOS:
        return None
    from ppdeploy.core.cache import default_root  # core.cache imports this module

    root = str(default_root())
    where = f"the cache ({root})" if root in str(exc.filename or "") else "that folder"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = (f"{where} is full: free space (`ppdeploy cache ls`, `ppdeploy cache clear --kind engine`) or point "
                "PPDEPLOY_CACHE at a larger disk")
    else:
        hint = f"{where} is not writable here: make it writable, or point PPDEPLOY_CACHE at a writable folder"
    return StorageError(f"{exc.strerror}: {exc.filename}", hint=hint)
