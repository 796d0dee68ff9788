"""Export one trained Keras model to a SavedModel and an ONNX file, and prove both match Keras.

tf2onnx's `from_keras` fails on Keras 3 models, so both artifacts come from one
`tf.function` with a fixed input signature: the SavedModel serves it and
tf2onnx converts it with `from_function`.
"""
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import tensorflow as tf
import tf2onnx

from mnist_cnn_progression.export.metadata import ExportError, as_properties
from mnist_cnn_progression.inference.files import sha256, staged_directory, write_bytes, write_json
from mnist_cnn_progression.inference.contract import (IMAGE_SHAPE, INPUT_NAME, OPSET, OUTPUT_NAME, PREPROCESSING,
                                                      in_scoring_batches)

__all__ = ["ExportError", "export_model", "check_parity"]

PARITY_TOLERANCE = 1e-5
SIGNATURE = tf.TensorSpec([None, *IMAGE_SHAPE], tf.float32, name=INPUT_NAME)


class Serving(tf.Module):
    """The serving signature: images [N, 28, 28, 1] -> {"probabilities": [N, 10]}."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    @tf.function(input_signature=[SIGNATURE])
    def serve(self, images):
        return {OUTPUT_NAME: self.model(images, training=False)}


def export_model(model, out_dir: Path, *, name: str, metadata: dict, images: np.ndarray) -> dict:
    """Write out_dir/savedmodel/<name>/1/ and out_dir/<name>.onnx, check both against Keras, return the manifest.

    Raises ExportError when either artifact's probabilities differ from Keras's
    by more than 1e-5 for any of `images`.
    """
    out_dir = Path(out_dir)
    images = np.asarray(images, dtype=np.float32).reshape(-1, *IMAGE_SHAPE)
    serving = Serving(model)
    savedmodel = Path("savedmodel") / name / "1"
    save_savedmodel(serving, out_dir / savedmodel)
    onnx_path = Path(f"{name}.onnx")
    write_bytes(out_dir / onnx_path, to_onnx(serving, metadata).SerializeToString())

    # Called eagerly: Keras's predict would build (and trace) a tf.function for every network exported.
    expected = in_scoring_batches(lambda batch: model(batch, training=False), images)
    onnx_session = ort.InferenceSession(str(out_dir / onnx_path), providers=["CPUExecutionProvider"])
    difference = check_parity(
        expected, in_scoring_batches(lambda batch: onnx_session.run(None, {INPUT_NAME: batch})[0], images),
        f"The ONNX model of {name}")
    served = tf.saved_model.load(str(out_dir / savedmodel)).signatures["serving_default"]
    check_parity(expected, in_scoring_batches(
        lambda batch: served(**{INPUT_NAME: tf.constant(batch)})[OUTPUT_NAME].numpy(), images),
        f"The reloaded SavedModel of {name}")

    manifest = {"savedmodel": str(savedmodel), "onnx": str(onnx_path), "parity_max_abs_diff": difference,
                "parity_images": len(images), "opset": OPSET,
                "sha256": {"onnx": sha256(out_dir / onnx_path),
                           "savedmodel": sha256(out_dir / savedmodel / "saved_model.pb")}}
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def save_savedmodel(serving: Serving, path: Path) -> None:
    """TensorFlow Serving layout <name>/<version>/, written beside and renamed into place."""
    with staged_directory(path) as temporary:
        tf.saved_model.save(serving, str(temporary), signatures={"serving_default": serving.serve})


def to_onnx(serving: Serving, metadata: dict) -> onnx.ModelProto:
    """Convert the serving function; name the batch dimension and record metadata."""
    model, _ = tf2onnx.convert.from_function(serving.serve, input_signature=[SIGNATURE], opset=OPSET)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.helper.set_model_props(model, {**as_properties(metadata), "opset": str(OPSET), "preprocessing": PREPROCESSING})
    onnx.checker.check_model(model, full_check=True)
    return model


def check_parity(expected: np.ndarray, actual: np.ndarray, what: str) -> float:
    """Return the largest absolute difference of any probability; raise ExportError past the tolerance.

    No separate check of classes: within the tolerance a class can change
    only where Keras's top two probabilities are a near tie (within twice the
    tolerance), and failing the export there would fail it on every rerun,
    since a resumed stage reaches the same weights.
    """
    difference = float(np.abs(expected - actual).max())
    if not difference <= PARITY_TOLERANCE:
        raise ExportError(f"{what} differs from Keras by up to {difference:.2e} per probability, "
                          f"more than the {PARITY_TOLERANCE:g} allowed.")
    return difference
