"""The deployable bundle: member networks, the fused ensemble (float and int8) and a manifest.

The directory can be copied to another machine and used with the inference
package alone (numpy, onnxruntime, pillow); no TensorFlow is imported here.
"""
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                      quantize_static)

from mnist_cnn_progression.export.metadata import ExportError, as_properties
from mnist_cnn_progression.inference.files import copy_file, sha256, write_bytes, write_json
from mnist_cnn_progression.inference.contract import (CLASS_OUTPUT, INPUT_CONTRACT, INPUT_NAME, MEAN_OUTPUT,
                                                      NUM_CLASSES, OPSET, PREPROCESSING, VOTES_OUTPUT, as_images)
from mnist_cnn_progression.inference.ensemble import Ensemble
from mnist_cnn_progression.export.fuse import fuse

CALIBRATION_BATCH = 100
MEMBERS_DIR, INT8_MEMBERS_DIR = "members", "members_int8"
FUSED, FUSED_INT8 = "ensemble.onnx", "ensemble_int8.onnx"


class ImageBatches(CalibrationDataReader):
    """Feeds calibration images to ONNX Runtime's calibrator, one batch at a time."""

    def __init__(self, images: np.ndarray):
        self.batches = iter(np.array_split(images, max(1, len(images) // CALIBRATION_BATCH)))

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def build_bundle(member_onnx_paths: list[Path], out_dir: Path, *, calibration_images, test_images, test_labels,
                 metadata: dict) -> dict:
    """Write the bundle into out_dir and return its manifest (paths relative to out_dir).

    calibration_images must come from the training set: the int8 ranges are
    fitted on all of them and the test set stays unseen. MinMax calibration
    keeps every intermediate tensor of every calibration batch in memory: give
    a thousand or so, not a whole training set. Raises ExportError when the
    fused graph predicts anything other than the vote of the separate members.
    """
    out_dir = Path(out_dir)
    members = [Path(MEMBERS_DIR) / f"member_{k}.onnx" for k in range(len(member_onnx_paths))]
    for source, member in zip(member_onnx_paths, members):
        copy_file(Path(source), out_dir / member)
    int8_members = quantize_members(out_dir, members, as_images(calibration_images))
    for fused, parts, kind in ((FUSED, members, "float32"), (FUSED_INT8, int8_members, "int8")):
        model = fuse([onnx.load(out_dir / part) for part in parts],
                     as_properties({**metadata, "weights": kind, "opset": OPSET, "preprocessing": PREPROCESSING}))
        write_bytes(out_dir / fused, model.SerializeToString())

    test_images, test_labels = as_images(test_images), np.asarray(test_labels)
    accuracy = {kind: fused_test_accuracy(out_dir / fused, [out_dir / m for m in parts], test_images, test_labels)
                for kind, fused, parts in (("float32", FUSED, members), ("int8", FUSED_INT8, int8_members))}
    files = [*members, *int8_members, Path(FUSED), Path(FUSED_INT8)]
    manifest = {
        "format": 1, "opset": OPSET, **INPUT_CONTRACT, "preprocessing": PREPROCESSING,
        "fused_outputs": {CLASS_OUTPUT: "int64 [N]", VOTES_OUTPUT: f"int64 [N, {NUM_CLASSES}]",
                          MEAN_OUTPUT: f"float32 [N, {NUM_CLASSES}], the members' mean"},
        "members": [str(m) for m in members], "members_int8": [str(m) for m in int8_members],
        "ensemble": FUSED, "ensemble_int8": FUSED_INT8,
        "files": {str(f): {"sha256": sha256(out_dir / f), "bytes": (out_dir / f).stat().st_size} for f in files},
        "calibration_images": len(calibration_images), "test_images": len(test_images),
        "test_accuracy": {kind: result["accuracy"] for kind, result in accuracy.items()},
        "test_errors": {kind: result["errors"] for kind, result in accuracy.items()},
        "metadata": metadata,
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


def quantize_members(out_dir: Path, members: list[Path], calibration_images: np.ndarray) -> list[Path]:
    """Static QDQ int8 (per-channel weights), calibrated on the calibration images."""
    quantized = []
    with tempfile.TemporaryDirectory() as scratch:
        for member in members:
            prepared = Path(scratch) / member.name
            quant_pre_process(str(out_dir / member), str(prepared), skip_symbolic_shape=True)
            target = Path(INT8_MEMBERS_DIR) / member.name
            temporary = Path(scratch) / f"int8_{member.name}"
            batches = ImageBatches(calibration_images)
            quantize_static(str(prepared), str(temporary), batches, quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
            copy_file(temporary, out_dir / target)
            quantized.append(target)
    return quantized


def fused_test_accuracy(fused_path: Path, member_paths: list[Path], images: np.ndarray, labels: np.ndarray) -> dict:
    """Test accuracy of the fused graph, after checking it against the members' vote through inference.vote."""
    fused = Ensemble([fused_path]).predict(images)
    mismatches = int((fused.classes != Ensemble(member_paths).predict(images).classes).sum())
    if mismatches:
        raise ExportError(f"The fused graph {fused_path.name} predicts another class than "
                          f"the vote of its members for {mismatches} of {len(images)} test images.")
    errors = int((fused.classes != labels).sum())
    return {"accuracy": 1 - errors / len(labels), "errors": errors}
