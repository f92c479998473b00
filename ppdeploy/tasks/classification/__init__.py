from ppdeploy.tasks.classification.preprocess import (
    PREPROCESS_FILE,
    PreprocessConfig,
    preprocess_image,
)
from ppdeploy.tasks.classification.task import (
    LABELS_FILE,
    ClassificationResult,
    Classifier,
    Prediction,
    read_labels,
    to_probabilities,
)

__all__ = ["PREPROCESS_FILE", "LABELS_FILE", "PreprocessConfig", "preprocess_image", "read_labels", "to_probabilities",
           "Prediction", "ClassificationResult", "Classifier"]
