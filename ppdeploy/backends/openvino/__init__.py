from ppdeploy.backends.openvino.backend import (  # noqa: F401
    BLOB,
    compile_config,
    OpenVINORunner,
    OpenVINOBackend,
)

__all__ = ['BLOB', 'compile_config', 'OpenVINORunner', 'OpenVINOBackend']
