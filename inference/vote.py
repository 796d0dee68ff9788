"""The ensemble's voting rule, shared by the Keras ensemble stage and ONNX Runtime.

Majority of predicted classes; a tie goes to the tied class with the highest
mean probability. NumPy only, so the inference package needs no TensorFlow.
"""
import numpy as np


def vote(probabilities: np.ndarray):
    """probabilities [members, N, 10] -> (classes [N], votes [N, 10], mean [N, 10])."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 3:
        raise ValueError(f"expected probabilities of shape [members, N, classes], got {probabilities.shape}")
    n_classes = probabilities.shape[-1]
    predicted = probabilities.argmax(axis=-1)                       # [members, N]
    votes = np.eye(n_classes, dtype=np.int64)[predicted].sum(axis=0)  # [N, classes]
    mean = probabilities.mean(axis=0)                               # [N, classes]
    # Among the classes with the most votes, the highest mean probability wins.
    tied = votes == votes.max(axis=-1, keepdims=True)
    classes = np.where(tied, mean, -np.inf).argmax(axis=-1)
    return classes, votes, mean
