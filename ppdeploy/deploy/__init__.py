from ppdeploy.deploy.load import (  # noqa: F401
    PRECISIONS,
    Deployment,
    load_model,
)

__all__ = ['PRECISIONS', 'Deployment', 'load_model']
