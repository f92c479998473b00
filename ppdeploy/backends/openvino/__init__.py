from ppdeploy.backends.openvino.backend import (  # noqa: F401
    BLOB,
    OpenVINOBackend,
    OpenVINORunner,
    compile_config,
)

__all__ = ['BLOB', 'compile_config', 'OpenVINORunner', 'OpenVINOBackend']
