"""export.tf_export: both artifacts, their parity with Keras, and a SavedModel read back in a fresh process."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from mnist_cnn_progression.export.metadata import ExportError
from mnist_cnn_progression.inference.files import sha256
from mnist_cnn_progression.inference.contract import OPSET
from mnist_cnn_progression.export.tf_export import check_parity, export_model

METADATA = {"stage": "dropout", "reference_accuracy": 0.996, "test_accuracy": 0.5}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mnist_digits):
    """The stage-6 network, untrained but with a random softmax layer so that classes differ."""
    from mnist_cnn_progression.models.networks import build_network
    from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID
    model = build_network(STAGE_BY_ID["dropout"].network, seed=3)
    kernel = model.get_layer("probabilities").kernel
    kernel.assign(np.random.default_rng(0).normal(0, 0.05, kernel.shape).astype(np.float32))
    images = mnist_digits[0][:500]
    out = tmp_path_factory.mktemp("export")
    return model, out, export_model(model, out, name="dropout", metadata=METADATA, images=images), images


def test_export_writes_savedmodel_and_onnx_that_match_keras(exported):
    model, out, manifest, images = exported
    assert manifest["savedmodel"] == "savedmodel/dropout/1"
    assert (out / manifest["savedmodel"] / "saved_model.pb").is_file()
    assert manifest["parity_images"] == 500 and manifest["parity_max_abs_diff"] <= 1e-5
    assert manifest["opset"] == OPSET
    assert manifest["sha256"] == {"onnx": sha256(out / "dropout.onnx"),
                                  "savedmodel": sha256(out / manifest["savedmodel"] / "saved_model.pb")}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not [p for p in out.rglob(".*")], "temporary files left behind"


def test_onnx_follows_the_contract_and_carries_metadata(exported):
    _, out, _, _ = exported
    proto = onnx.load(out / "dropout.onnx")
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert {o.domain: o.version for o in proto.opset_import}[""] == OPSET
    properties = {p.key: p.value for p in proto.metadata_props}
    assert properties["stage"] == "dropout" and properties["reference_accuracy"] == "0.996"
    assert properties["opset"] == str(OPSET) and "28x28" in properties["preprocessing"]


def test_savedmodel_in_a_fresh_process_reproduces_keras(exported, tmp_path):
    model, out, manifest, images = exported
    np.save(tmp_path / "images.npy", images[:100])
    script = (
        "import sys, numpy as np, tensorflow as tf\n"
        "serve = tf.saved_model.load(sys.argv[1]).signatures['serving_default']\n"
        "probabilities = serve(images=tf.constant(np.load(sys.argv[2])))['probabilities']\n"
        "np.save(sys.argv[3], probabilities.numpy())\n")
    subprocess.run([sys.executable, "-c", script, str(out / manifest["savedmodel"]), str(tmp_path / "images.npy"),
                    str(tmp_path / "served.npy")], check=True, capture_output=True)
    served = np.load(tmp_path / "served.npy")
    expected = model.predict_on_batch(images[:100])
    assert served.shape == (100, 10)
    assert np.abs(served - expected).max() <= 1e-6
    assert (served.argmax(1) == expected.argmax(1)).all()


def test_parity_check_rejects_a_difference_or_another_class():
    expected = np.array([[0.6, 0.4], [0.2, 0.8]], np.float32)
    assert check_parity(expected, expected + 5e-6, "The ONNX model of x") <= 1e-5
    with pytest.raises(ExportError, match=r"differs from Keras by up to 2\.00e-05 .*allowed\.$"):
        check_parity(expected, expected + 2e-5, "The ONNX model of x")
    with pytest.raises(ExportError, match="differs"):
        check_parity(expected, np.full_like(expected, np.nan), "The ONNX model of x")


def test_a_near_tie_that_flips_class_within_the_tolerance_passes():
    """Keras 0.5 + 4e-6 vs ONNX 0.5 - 4e-6: the same numbers to 8e-6, another argmax; it must not fail."""
    flipped = np.array([[0.6, 0.4], [0.5 + 4e-6, 0.5 - 4e-6]], np.float32)
    nearly = np.array([[0.6, 0.4], [0.5 - 4e-6, 0.5 + 4e-6]], np.float32)
    assert check_parity(nearly, flipped, "The ONNX model of x") == pytest.approx(8e-6, rel=0.01)


def test_replacing_a_directory_never_loses_the_old_one_when_the_new_one_cannot_go_in(tmp_path, monkeypatch):
    """replace_dir renames the old one aside first (it used to delete it first): a failed rename puts it back."""
    import os

    from mnist_cnn_progression.inference import files
    old, new = tmp_path / "bundle", tmp_path / "new"
    old.mkdir()
    (old / "manifest.json").write_text("old")
    new.mkdir()
    (new / "manifest.json").write_text("new")
    files.replace_dir(new, old)
    assert (old / "manifest.json").read_text() == "new" and sorted(os.listdir(tmp_path)) == ["bundle"]

    (tmp_path / "newer").mkdir()
    real = os.replace

    def no_room(source, target):
        if os.path.basename(source) == "newer":
            raise OSError("no room")
        real(source, target)
    monkeypatch.setattr(files.os, "replace", no_room)
    with pytest.raises(OSError, match="no room"):
        files.replace_dir(tmp_path / "newer", old)
    assert (old / "manifest.json").read_text() == "new"



def test_the_int8_calibration_sees_the_stages_first_1000_training_images(bundle, sample, tmp_path, monkeypatch):
    """ONNX Runtime's calibrator sees exactly the images the stage hands the bundle: the first 1,000 of the training
    set, scaled as the networks take them (the bundle once took an 'even sample' of them, which changed nothing)."""
    from mnist_cnn_progression.export import bundle as bundles
    from mnist_cnn_progression.inference.contract import as_images
    from mnist_cnn_progression.pipeline.modelstage import calibration_images
    seen, batches = [], bundles.ImageBatches
    monkeypatch.setattr(bundles, "ImageBatches", lambda images: seen.append(images) or batches(images))
    shutil.copytree(bundle / "members", tmp_path / "members")
    bundles.quantize_members(tmp_path, [Path("members/member_0.onnx")], as_images(calibration_images(sample)))
    assert len(seen) == 1
    assert np.array_equal(seen[0], sample.train_images[:1000, ..., None] / np.float32(255))
