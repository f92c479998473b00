from ppdeploy.source.model import (  # noqa: F401
    ONNX,
    PDMODEL,
    PIR,
    ModelSource,
    detect,
    from_layer,
)

__all__ = ['PDMODEL', 'PIR', 'ONNX', 'ModelSource', 'detect', 'from_layer']
