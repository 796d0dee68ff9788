"""The reference semantics of SEED.md "Layers", pinned number by number."""
import math
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from mnist_cnn_progression.models import Conv, Dense, Network
from mnist_cnn_progression.models.layers import ConvPool
from mnist_cnn_progression.models.networks import build_network, load_model
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID, STAGES

ROOT = Path(__file__).resolve().parents[1]

# Parameter counts worked out by hand from SEED.md's table.
CONV20, CONV40 = 5 * 5 * 20 + 20, 5 * 5 * 20 * 40 + 40
EXPECTED_PARAMETERS = {
    "baseline": 784 * 100 + 100 + 100 * 10 + 10,
    "conv1": CONV20 + 2880 * 100 + 100 + 1010,
    "conv2": CONV20 + CONV40 + 640 * 100 + 100 + 1010,
    "conv2_relu": CONV20 + CONV40 + 640 * 100 + 100 + 1010,
    "expanded": CONV20 + CONV40 + 640 * 100 + 100 + 1010,
    "extra_fc": CONV20 + CONV40 + 640 * 100 + 100 + 100 * 100 + 100 + 1010,
    "dropout": CONV20 + CONV40 + 640 * 1000 + 1000 + 1000 * 1000 + 1000 + 10010,
    "ensemble": CONV20 + CONV40 + 640 * 1000 + 1000 + 1000 * 1000 + 1000 + 10010,
}


@pytest.mark.parametrize("stage_id", list(EXPECTED_PARAMETERS))
def test_parameter_count_of_every_stage(stage_id):
    assert build_network(STAGE_BY_ID[stage_id].network).count_params() == EXPECTED_PARAMETERS[stage_id]


def test_conv_pool_shapes_24_12_8_4():
    x = np.zeros((2, 28, 28, 1), np.float32)
    first = ConvPool(20)
    second = ConvPool(40)
    h = first(x)
    assert h.shape == (2, 12, 12, 20)  # 28 - 5 + 1 = 24, pooled to 12
    assert second(h).shape == (2, 4, 4, 40)  # 12 - 5 + 1 = 8, pooled to 4


def test_reference_initialisation_statistics():
    model = build_network(STAGE_BY_ID["dropout"].network, seed=3)
    conv1, conv2 = [l for l in model.layers if isinstance(l, ConvPool)]
    fc1000 = [l for l in model.layers if isinstance(l, keras.layers.Dense)][0]
    softmax = model.get_layer("probabilities")
    # ConvPool: n_out = filters * kernel area / pool area.
    assert np.std(conv2.kernel.numpy()) == pytest.approx(math.sqrt(1 / (40 * 25 / 4)), rel=0.03)
    assert np.std(conv1.kernel.numpy()) == pytest.approx(math.sqrt(1 / (20 * 25 / 4)), rel=0.15)
    assert np.std(fc1000.kernel.numpy()) == pytest.approx(math.sqrt(1 / 1000), rel=0.02)
    assert abs(np.mean(fc1000.kernel.numpy())) < 0.001
    assert np.std(fc1000.bias.numpy()) == pytest.approx(1.0, rel=0.1)  # biases ~ N(0, 1)
    assert not softmax.kernel.numpy().any() and not softmax.bias.numpy().any()  # the softmax starts at zero


def test_he_initialisation_scales_by_fan_in_with_zero_biases_and_survives_a_round_trip(tmp_path):
    model = build_network(STAGE_BY_ID["dropout"].network, seed=3, init="he")
    conv1, conv2 = [l for l in model.layers if isinstance(l, ConvPool)]
    fc1000 = [l for l in model.layers if isinstance(l, keras.layers.Dense)][0]
    assert np.std(conv2.kernel.numpy()) == pytest.approx(math.sqrt(2 / (20 * 25)), rel=0.05)  # fan-in 5x5x20
    assert np.std(fc1000.kernel.numpy()) == pytest.approx(math.sqrt(2 / 640), rel=0.05)
    assert not conv1.bias.numpy().any() and not fc1000.bias.numpy().any()
    assert not model.get_layer("probabilities").kernel.numpy().any()  # the softmax still starts at zero
    model.save(tmp_path / "he.keras")
    assert load_model(tmp_path / "he.keras").layers[0].get_config()["init"] == "he"


def test_dropout_only_on_inputs_of_fc_and_softmax_layers():
    model = build_network(STAGE_BY_ID["dropout"].network)
    kinds = [type(l).__name__ for l in model.layers]
    assert kinds == ["ConvPool", "ConvPool", "Flatten", "ReplicaDropout", "Dense", "ReplicaDropout", "Dense",
                     "ReplicaDropout", "Dense"]
    assert all(l.rate == 0.5 for l in model.layers if isinstance(l, keras.layers.Dropout))


def test_dropout_acts_in_training_only():
    model = build_network(STAGE_BY_ID["dropout"].network)
    model.get_layer("probabilities").set_weights([np.random.default_rng(0).normal(size=(1000, 10)).astype("f"),
                                                  np.zeros(10, "f")])
    x = np.random.default_rng(1).random((4, 28, 28, 1)).astype(np.float32)
    inference = [model(x, training=False).numpy() for _ in range(2)]
    training = [model(x, training=True).numpy() for _ in range(2)]
    np.testing.assert_array_equal(inference[0], inference[1])
    assert not np.allclose(training[0], training[1])
    assert not np.allclose(training[0], inference[0])


REPLICA_MASKS = """
import sys
import keras
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mnist_cnn_progression.models.networks import build_network
from mnist_cnn_progression.pipeline.stages import STAGE_BY_ID

def masks(strategy):
    # Each dropout layer's mask on every replica, two steps: 1 kept, 0 dropped, -1 where the input was 0 already.
    with strategy.scope():
        model = build_network(STAGE_BY_ID["dropout"].network, seed=4)
    dropouts = [layer for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    inner = keras.Model(model.inputs, [[layer.input, layer.output] for layer in dropouts])
    x = tf.ones((3, 28, 28, 1))

    @tf.function
    def step():  # every replica gets the same input: only the masks can make their outputs differ
        mask = lambda i, o: tf.where(i == 0, tf.constant(-1, tf.int8), tf.cast(o != 0, tf.int8))
        return strategy.run(lambda: [mask(i, o) for i, o in inner(x, training=True)])

    return [[np.stack([t.numpy() for t in strategy.experimental_local_results(out)]) for out in step()]
            for _ in range(2)]  # [step][layer] -> [replica, batch, units]

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
runs = {"m": masks(mirrored), "again": masks(mirrored), "alone": masks(tf.distribute.get_strategy())}
np.savez(sys.argv[1], **{f"{run}{s}_{l}": m for run, steps in runs.items() for s, step in enumerate(steps)
                         for l, m in enumerate(step)})
"""


def test_every_replica_draws_its_own_dropout_masks(tmp_path):
    """Two replicas (two logical CPUs, MirroredStrategy) must not drop the same units; the masks follow the seed.

    Replica 0 draws what one device alone draws (so single-device training is
    unchanged), replica 1 its own masks, every step new ones, and a model
    built again with the same seed draws the very same masks.
    """
    # Logical devices must be configured before TensorFlow initialises: a process of its own.
    subprocess.run([sys.executable, "-c", REPLICA_MASKS, str(tmp_path / "masks.npz")], cwd=ROOT, check=True,
                   capture_output=True)
    drawn = np.load(tmp_path / "masks.npz")
    for layer in range(3):
        for step in range(2):
            masks = drawn[f"m{step}_{layer}"]
            assert masks.shape[0] == 2 and 0.4 < (masks[masks >= 0] == 1).mean() < 0.6  # rate 0.5
            assert not np.array_equal(masks[0], masks[1]), f"both replicas dropped the same units (layer {layer})"
            np.testing.assert_array_equal(masks, drawn[f"again{step}_{layer}"])  # deterministic from the seed
            np.testing.assert_array_equal(masks[0], drawn[f"alone{step}_{layer}"][0])  # replica 0 = one device
        assert not np.array_equal(drawn[f"m0_{layer}"], drawn[f"m1_{layer}"])  # new masks every step


def test_l2_term_is_weights_only_with_the_given_coefficient():
    coefficient = 0.5 * 0.1 / 5000  # lambda 0.1, 5,000 mini-batches per epoch
    model = build_network(STAGE_BY_ID["conv2_relu"].network, l2=coefficient)
    model(np.zeros((1, 28, 28, 1), np.float32))
    kernels = [w for w in model.weights if "kernel" in w.path]
    expected = coefficient * sum(float(np.sum(np.square(w.numpy()))) for w in kernels)
    assert len(kernels) == 4
    assert float(sum(model.losses)) == pytest.approx(expected, rel=1e-5)


def test_l2_pooling_is_root_of_sum_of_squares_before_bias_and_activation():
    layer = ConvPool(1, kernel_size=1, pooling="l2", activation="relu")
    layer.build((None, 4, 4, 1))
    layer.kernel.assign(np.ones((1, 1, 1, 1), np.float32))
    layer.bias.assign(np.array([-1.0], np.float32))
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1) - 8
    window = x[0, :2, :2, 0]
    expected = max(0.0, math.sqrt(float(np.sum(window ** 2))) - 1.0)
    assert float(layer(x)[0, 0, 0, 0]) == pytest.approx(expected, rel=1e-5)


def test_max_pool_then_bias_and_activation_equals_conv_activation_pool():
    layer = ConvPool(3, activation="sigmoid", seed=1)
    x = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
    pooled_first = layer(x)
    z = keras.ops.conv(x, layer.kernel)
    reference = keras.ops.max_pool(keras.activations.sigmoid(z + layer.bias), 2, 2)
    np.testing.assert_allclose(pooled_first, reference, atol=1e-6)


def test_network_description_and_model_round_trip(tmp_path):
    network = Network((Conv(20, pooling="l2"), Dense(100)), "relu", dropout=0.5)
    assert network.describe() == "conv20-l2pool-fc100-softmax (relu, dropout 0.5)"
    model = build_network(network, l2=1e-4)
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    x = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
    np.testing.assert_allclose(model(x), again(x), atol=1e-6)


def test_stage_table_covers_seed_md():
    main = [s.id for s in STAGES if not s.optional]
    assert main == ["baseline", "conv1", "conv2", "conv2_relu", "expanded", "extra_fc", "dropout", "ensemble"]
    assert STAGE_BY_ID["ensemble"].members == 5
    assert [STAGE_BY_ID[s].reference for s in main] == [0.978, 0.9878, 0.9906, 0.9923, 0.9937, 0.9943, 0.996, 0.9967]


def test_the_stage_table_and_presets_load_without_keras():
    """--help, --stages and the comparison tool read the table; they must not wait for TensorFlow to start."""
    code = ("import sys; from mnist_cnn_progression.pipeline import stages, config, compare; "
            "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
