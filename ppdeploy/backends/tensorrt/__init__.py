"""TensorRT and TensorRT-RTX: library traits, builder settings, optimization profiles, engine build, the artifact,
CUDA memory, the runner and the two backend classes."""
from ppdeploy.backends.tensorrt.artifact import (
           ENGINE_FILE,
           META_FILE,
           aux_cache_path,
           meta_io,
           meta_profiles,
           read_meta,
)
from ppdeploy.backends.tensorrt.backend import TensorRTBackend, TensorRTRTXBackend
from ppdeploy.backends.tensorrt.build import build_engine, parser_errors
from ppdeploy.backends.tensorrt.cuda import CudaError, CudaMemory, StagedBuffers
from ppdeploy.backends.tensorrt.library import (
           TENSORRT,
           TENSORRT_RTX,
           Flavour,
           LibraryTraits,
           import_library,
           traits_of,
)
from ppdeploy.backends.tensorrt.profiles import (
           envelope,
           nbytes,
           plan_profiles,
           select_profile,
)
from ppdeploy.backends.tensorrt.runner import TensorRTRunner, profile_buffer_sizes
from ppdeploy.backends.tensorrt.settings import BuilderSettings

__all__ = ["ENGINE_FILE", "META_FILE", "Flavour", "TENSORRT", "TENSORRT_RTX", "LibraryTraits", "traits_of",
           "import_library", "BuilderSettings", "plan_profiles", "envelope", "select_profile", "nbytes",
           "parser_errors", "aux_cache_path", "build_engine", "read_meta", "meta_io", "meta_profiles", "CudaError",
           "CudaMemory", "StagedBuffers", "profile_buffer_sizes", "TensorRTRunner", "TensorRTBackend",
           "TensorRTRTXBackend"]
