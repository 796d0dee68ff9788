"""The evaluation stage: one stage's test-set results, in the JSON form summary.json keeps.

NumPy only, so the same numbers can be recomputed from saved probabilities
(or the ensemble's voted classes) without TensorFlow.
"""
import numpy as np

from mnist_cnn_progression.inference.contract import NUM_CLASSES


def evaluate(probabilities: np.ndarray | None, labels: np.ndarray, reference_accuracy: float,
             predictions: np.ndarray | None = None) -> dict:
    """Accuracy, errors, per-class precision/recall and confusion matrix of one stage.

    Give probabilities [N, 10], or predictions= (classes [N]) for the ensemble,
    whose classes come from the vote rather than an argmax. Fractions are in
    [0, 1]; confusion_matrix[true][predicted] counts test digits.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if (probabilities is None) == (predictions is None):
        raise ValueError("give exactly one of probabilities and predictions")
    if predictions is None:
        probabilities = np.asarray(probabilities)
        if probabilities.shape != (len(labels), NUM_CLASSES):
            raise ValueError(f"expected probabilities [{len(labels)}, {NUM_CLASSES}], got {probabilities.shape}")
        predictions = probabilities.argmax(axis=-1)
    predictions = np.asarray(predictions, dtype=np.int64)
    if predictions.shape != labels.shape:
        raise ValueError(f"expected {labels.shape[0]} predictions, got shape {predictions.shape}")

    confusion = np.bincount(labels * NUM_CLASSES + predictions, minlength=NUM_CLASSES ** 2)
    confusion = confusion.reshape(NUM_CLASSES, NUM_CLASSES)
    correct = np.diag(confusion)
    wrong = np.flatnonzero(predictions != labels)
    accuracy = float(correct.sum() / len(labels))
    return {
        "accuracy": accuracy,
        "errors": int(len(wrong)),
        "misclassified": wrong.tolist(),
        "per_class": {"precision": _ratio(correct, confusion.sum(axis=0)),
                      "recall": _ratio(correct, confusion.sum(axis=1))},
        "confusion_matrix": confusion.tolist(),
        "difference_pp": (accuracy - reference_accuracy) * 100,
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> list:
    """numerator / denominator per class; 0.0 for a class never predicted (or absent)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0).tolist()
