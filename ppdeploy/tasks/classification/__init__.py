from ppdeploy.tasks.classification.task import (  # noqa: F401
    PREPROCESS_FILE,
    LABELS_FILE,
    PreprocessConfig,
    preprocess_image,
    read_labels,
    to_probabilities,
    Prediction,
    ClassificationResult,
    Classifier,
)

__all__ = ['PREPROCESS_FILE', 'LABELS_FILE', 'PreprocessConfig', 'preprocess_image', 'read_labels', 'to_probabilities', 'Prediction', 'ClassificationResult', 'Classifier']
