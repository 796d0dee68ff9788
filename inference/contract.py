"""The one input/output contract every exported model and the bundle follow.

Kept in one place so the exporter, the bundle, the ensemble and the
prediction command cannot drift apart.
"""
import numpy as np

INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
# Images a call when a whole set is scored (validation, test, export parity): large enough for the kernels to dominate.
SCORING_BATCH = 1000
# tf2onnx 1.17 supports up to 18; 17 keeps the reduce ops' axes as attributes
# and is understood by every ONNX Runtime release since 1.11.
OPSET = 17

# SEED.md's reference for the ensemble (33 of 10,000 test digits wrong): pipeline/stages.py's table row, mnist-push's
# default floor, and what the server's metadata names when a bundle does not record its stage's reference.
ENSEMBLE_REFERENCE_ACCURACY = 0.9967

# The fused ensemble's outputs: the voted class, the votes per class, the members' mean probabilities.
CLASS_OUTPUT, VOTES_OUTPUT, MEAN_OUTPUT = "class", "votes", "probabilities"

INPUT_CONTRACT = {
    "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", *IMAGE_SHAPE], "range": [0.0, 1.0]},
    "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", NUM_CLASSES]},
}
PREPROCESSING = ("MNIST convention: 28x28 grayscale, white digit on black, pixel / 255 in [0, 1], "
                 "digit scaled to fit 20x20 and centred by its centre of mass in the 28x28 frame")


def as_images(images) -> np.ndarray:
    """uint8 [N, 28, 28] (a run's data files) or float [N, 28, 28(, 1)] -> float32 [N, 28, 28, 1] in [0, 1]."""
    images = np.asarray(images)
    scale = 255.0 if images.dtype == np.uint8 else 1.0
    return (images.astype(np.float32) / scale).reshape(-1, *IMAGE_SHAPE)


def in_scoring_batches(score, images: np.ndarray):
    """score(batch) over a whole set, SCORING_BATCH images a call, the calls' outputs joined.

    For a score that returns several outputs (a tuple or list), each is joined
    on its own. The one loop for Keras, TensorFlow and ONNX Runtime alike.
    """
    parts = [score(images[start:start + SCORING_BATCH]) for start in range(0, len(images), SCORING_BATCH)]
    if isinstance(parts[0], (tuple, list)):
        return tuple(np.concatenate(outputs) for outputs in zip(*parts))
    return np.concatenate([np.asarray(part) for part in parts])
