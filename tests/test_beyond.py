"""The stage beyond the seed: its batch-normalised convolution, and `--stages beyond` end to end on the sample."""
import contextlib
import io
import json
import math

import keras
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from mnist_cnn_progression.pipeline import cli
from mnist_cnn_progression.export.fuse import fuse
from mnist_cnn_progression.export.tf_export import export_model
from mnist_cnn_progression.inference.ensemble import Ensemble
from mnist_cnn_progression.inference.vote import vote
from mnist_cnn_progression.models import BNConv, Dense, Network
from mnist_cnn_progression.models.networks import build_network, load_model
from mnist_cnn_progression.pipeline.recipe import MEMBER_SEED_STRIDE
from mnist_cnn_progression.pipeline.runner import DEFAULT_NODES
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID

pytestmark = pytest.mark.slow  # these train the beyond stage's networks

BEYOND = STAGE_BY_ID["beyond"]


def with_learned_statistics(model: keras.Model, seed: int = 0) -> keras.Model:
    """Moving means and variances far from their start, and a softmax layer that separates classes.

    Inference must use these statistics, not the batch's: a model that used
    the batch's would give one image another answer alone than in a batch.
    """
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.5, layer.moving_mean.shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.2, 3, layer.moving_variance.shape).astype(np.float32))
    kernel = model.get_layer("probabilities").kernel
    kernel.assign(rng.normal(0, 0.3, kernel.shape).astype(np.float32))
    return model


def keras_macs(model: keras.Model) -> int:
    """Multiply-accumulates counted from the built Keras layers themselves."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            height, width, filters = layer.output.shape[1:]
            total += height * width * filters * int(np.prod(layer.kernel.shape[:3]))
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return total


def test_a_bn_conv_is_keras_conv_without_bias_then_batch_norm_relu_and_pooling():
    model = build_network(Network((BNConv(8, 5, "valid", pool_size=2), BNConv(16), Dense(32)), "relu"))
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "BatchNormalization", "Activation", "MaxPooling2D", "Conv2D", "BatchNormalization",
                     "Activation", "Flatten", "Dense", "Dense"]
    first, second = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert not first.use_bias and not second.use_bias
    assert first.output.shape[1:] == (24, 24, 8) and second.output.shape[1:] == (12, 12, 16)  # "same" keeps 12
    assert model.layers[2].activation is keras.activations.relu


@pytest.mark.parametrize("network", [Network((BNConv(8, 5, "valid", pool_size=2), BNConv(16), Dense(32)), "relu"),
                                     BEYOND.network])
def test_multiply_accumulates_match_the_built_layers(network):
    assert network.multiply_accumulates() == keras_macs(build_network(network))


def test_the_beyond_network_costs_6_1_million_macs_and_describes_itself():
    assert BEYOND.network.multiply_accumulates() == (24 * 24 * 25 * 32 + 12 * 12 * 9 * 32 * 64 + 6 * 6 * 9 * 64 * 128
                                                     + 3 * 3 * 128 * 256 + 256 * 10)
    assert BEYOND.network.describe() == ("bnconv32(5x5)-pool-bnconv64(3x3 same)-pool-bnconv128(3x3 same)-pool-"
                                         "fc256-softmax (relu, dropout 0.25)")


def test_the_stage_is_an_optional_vote_of_three_meant_to_beat_the_seeds_best():
    assert BEYOND.optional and BEYOND.members == 3 and BEYOND.data == "train"
    assert BEYOND.reference == STAGE_BY_ID["ensemble"].reference
    assert "beyond" not in DEFAULT_NODES


@pytest.mark.parametrize("init, std", [("reference", math.sqrt(1 / (32 * 25 / 4))), ("he", math.sqrt(2 / 25))])
def test_bn_conv_kernels_start_as_init_says_and_follow_the_seed(init, std):
    first_kernel = lambda: build_network(BEYOND.network, seed=4, init=init).layers[0].kernel.numpy()
    kernel = first_kernel()
    np.testing.assert_array_equal(kernel, first_kernel())
    assert np.std(kernel) == pytest.approx(std, rel=0.1)


def test_a_save_load_round_trip_keeps_the_learned_statistics(tmp_path, mnist_digits):
    model = with_learned_statistics(build_network(BEYOND.network, seed=4))
    model.save(tmp_path / "beyond.keras")
    again = load_model(tmp_path / "beyond.keras")
    images = mnist_digits[0][:64]
    np.testing.assert_allclose(again(images, training=False), model(images, training=False), atol=1e-6)


def test_onnx_export_keeps_batch_norm_in_inference_mode_and_fuses_into_a_vote(tmp_path, mnist_digits):
    images = mnist_digits[0][:300]
    models = [with_learned_statistics(build_network(BEYOND.network, seed=k), seed=k) for k in range(3)]
    paths = []
    for k, model in enumerate(models):
        manifest = export_model(model, tmp_path / f"member_{k}", name=f"member_{k}", metadata={"stage": "beyond"},
                                images=images)
        assert manifest["parity_max_abs_diff"] <= 1e-5
        paths.append(tmp_path / f"member_{k}" / manifest["onnx"])
    session = ort.InferenceSession(str(paths[0]), providers=["CPUExecutionProvider"])
    alone = session.run(None, {"images": images[:1]})[0]
    np.testing.assert_allclose(alone, models[0](images[:1], training=False), atol=1e-5)
    np.testing.assert_allclose(alone, session.run(None, {"images": images})[0][:1], atol=1e-5)

    fused = tmp_path / "ensemble.onnx"
    fused.write_bytes(fuse([onnx.load(p) for p in paths], {"stage": "beyond"}).SerializeToString())
    keras_probabilities = np.stack([model(images, training=False).numpy() for model in models])
    prediction = Ensemble([fused]).predict(images)
    classes, votes, _ = vote(keras_probabilities)
    np.testing.assert_array_equal(prediction.classes, classes)
    np.testing.assert_array_equal(prediction.votes, votes)
    assert (prediction.votes.sum(axis=1) == 3).all()


@pytest.fixture(scope="module")
def beyond_run(tmp_path_factory):
    """`--stages beyond,report` on the sample: 150 updates per network, rotation, zoom and shifts on the fly."""
    run_dir = tmp_path_factory.mktemp("beyond_run")
    log = io.StringIO()
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        code = cli.main([
            "--data", "sample", "--preset", "quick", "--stages", "beyond,report", "--run-dir", str(run_dir),
            "--set", "train_limit=640", "--set", "epochs=1", "--set", "batch_size=64", "--set", "min_steps.beyond=150",
            "--set", "max_rotation.beyond=12", "--set", "max_zoom.beyond=0.1", "--set", "max_shift.beyond=2"])
    assert code == 0, log.getvalue()
    return run_dir, json.loads((run_dir / "summary.json").read_text())["stages"]["beyond"]


def test_beyond_trains_three_networks_and_records_their_vote(beyond_run):
    _, entry = beyond_run
    assert entry["status"] == "done" and entry["reference_accuracy"] == 0.9967
    assert [member["seed"] for member in entry["members"]] == [0, MEMBER_SEED_STRIDE, 2 * MEMBER_SEED_STRIDE]
    assert entry["settings"]["max_rotation"] == 12 and entry["settings"]["max_zoom"] == 0.1
    assert entry["settings"]["max_shift"] == 2 and entry["trained_images"] == 3 * entry["epochs"] * 640
    assert entry["evaluation"]["accuracy"] == entry["test_accuracy"] > 0.5
    assert len(entry["export"]["members"]) == 3 and entry["export"]["parity_max_abs_diff"] <= 1e-5


def test_its_bundle_lives_in_its_stage_and_the_inference_package_votes_like_the_summary(beyond_run):
    run_dir, entry = beyond_run
    bundle = run_dir / "stages" / "beyond" / "bundle"
    assert not (run_dir / "bundle").exists()  # the run's bundle/ stays the seed's ensemble's
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest == entry["bundle"] and len(manifest["members"]) == 3 and manifest["metadata"]["stage"] == "beyond"
    images = np.load(run_dir / "data" / "test_images.npy") / np.float32(255)
    labels = np.load(run_dir / "data" / "test_labels.npy")
    for fused in (True, False):
        prediction = Ensemble.load(bundle, fused=fused).predict(images)
        assert (prediction.votes.sum(axis=1) == 3).all()
        accuracy = float((prediction.classes == labels).mean())
        assert accuracy == pytest.approx(manifest["test_accuracy"]["float32"], abs=1e-12)  # 1 - errors / n there
        assert accuracy == pytest.approx(entry["test_accuracy"], abs=1 / len(labels))  # a near tie may flip


def test_the_report_shows_beyond_apart_with_its_vote_figure(beyond_run):
    run_dir, entry = beyond_run
    markdown = (run_dir / "report" / "report.md").read_text()
    section = markdown.split("## Beyond the seed", 1)[1].split("\n## ", 1)[0]
    assert f"| beyond | {entry['network']} |" in section and "(max_shift 2, max_rotation 12, max_zoom 0.1)" in section
    assert "![beyond: test accuracy of each network and of their vote" in section
    assert (run_dir / "report" / "vote_beyond.png").is_file()
    assert f"mnist-predict --models {run_dir / 'stages' / 'beyond' / 'bundle'}" in markdown
