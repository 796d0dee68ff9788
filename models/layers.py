"""The reference layers (SEED.md "Layers") as Keras pieces.

Keras has Dense and Dropout; what it lacks is the reference conv-pool order
(pool *before* bias + activation, which matters for L2 pooling), the
reference initialisation, whose standard deviation depends on the layer's
fan-out, and dropout that draws its own masks on every replica of a
tf.distribute strategy. Those three are the only custom parts.
"""
import math

import keras
import tensorflow as tf
from keras import ops

from mnist_cnn_progression.models.specs import convolved_size


def reference_kernel_init(n_out: float, seed=None):
    """Weights ~ N(0, sqrt(1 / n_out)), as network3.py draws them."""
    return keras.initializers.RandomNormal(stddev=math.sqrt(1.0 / n_out), seed=seed)


def conv_fan_out(filters: int, kernel_size: int, pool_size: int) -> float:
    """A convolution's n_out as network3.py counts it: filters x kernel area / pooling area."""
    return filters * kernel_size ** 2 / pool_size ** 2


def reference_bias_init(seed=None):
    """Biases ~ N(0, 1)."""
    return keras.initializers.RandomNormal(stddev=1.0, seed=seed)


def initializers(init: str, n_out: float, seed=None) -> tuple:
    """(kernel, bias) initializers of a layer.

    "reference": the reference's, N(0, sqrt(1 / n_out)) weights and N(0, 1)
    biases. "he": He-normal weights (scaled by fan-in) and zero biases, how
    ReLU networks start today; the reference's biases leave many ReLUs dead at
    the start, and its networks learn visibly slower in their first epochs.
    """
    if init == "reference":
        return reference_kernel_init(n_out, seed), reference_bias_init(None if seed is None else seed + 1)
    if init == "he":
        return keras.initializers.HeNormal(seed=seed), keras.initializers.Zeros()
    raise ValueError(f"init must be reference or he, not {init!r}")


@keras.saving.register_keras_serializable(package="mnist")
class ConvPool(keras.layers.Layer):
    """Convolution, then non-overlapping pooling, then bias + activation.

    pooling="max" takes the window maximum; pooling="l2" takes the square root
    of the sum of squares over the window (a 1e-12 floor keeps its gradient
    finite where the window is all zeros).
    """

    def __init__(self, filters, kernel_size=5, pool_size=2, pooling="max", activation="sigmoid",
                 strides=1, padding="valid", kernel_regularizer=None, seed=None, init="reference", **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("max", "l2"):
            raise ValueError(f"pooling must be 'max' or 'l2', not {pooling!r}")
        self.filters, self.kernel_size, self.pool_size = filters, kernel_size, pool_size
        self.pooling, self.strides, self.padding, self.seed, self.init = pooling, strides, padding, seed, init
        self.activation = keras.activations.get(activation)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        n_out = conv_fan_out(self.filters, self.kernel_size, self.pool_size)
        kernel_init, bias_init = initializers(self.init, n_out, self.seed)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, input_shape[-1], self.filters),
            initializer=kernel_init, regularizer=self.kernel_regularizer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=bias_init)

    def call(self, inputs):
        z = ops.conv(inputs, self.kernel, strides=self.strides, padding=self.padding)
        window = (self.pool_size, self.pool_size)
        if self.pooling == "max":
            z = ops.max_pool(z, window, strides=window)
        else:
            z = ops.sqrt(ops.average_pool(ops.square(z), window, strides=window) * self.pool_size ** 2 + 1e-12)
        return self.activation(z + self.bias)

    def compute_output_shape(self, input_shape):
        def out(size):
            return convolved_size(size, self.kernel_size, self.strides, self.padding) // self.pool_size
        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "pool_size": self.pool_size, "pooling": self.pooling, "strides": self.strides,
                "padding": self.padding, "seed": self.seed, "init": self.init,
                "activation": keras.activations.serialize(self.activation),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)}


@keras.saving.register_keras_serializable(package="mnist")
class ReplicaDropout(keras.layers.Dropout):
    """Keras's Dropout, except that every replica of a tf.distribute strategy draws its own masks.

    Keras's seeded Dropout takes its per-call seed from one seed-generator
    state that each replica holds a copy of, so under MirroredStrategy or
    MultiWorkerMirroredStrategy every replica would drop the same units on
    every step. Here the drawn seed is folded with the replica's global id
    (its id in the sync group, which counts across workers). Replica 0 (and
    any call outside a strategy) uses the drawn seed as it is, so with one
    replica the masks are exactly Keras's. The state still advances by one
    per call on every replica, deterministically from the seed, and it is a
    variable of the model (tf.train.Checkpoint(model=...) does not reach it;
    pipeline.train checkpoints it).
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0:
            return inputs
        seed = self.seed_generator.next()
        context = tf.distribute.get_replica_context()
        replica = tf.cast(context.replica_id_in_sync_group if context is not None else 0, tf.int32)
        folded = tf.cast(tf.random.experimental.stateless_fold_in(seed, replica), seed.dtype)
        seed = tf.where(replica > 0, folded, seed)
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)  # as Keras casts it
        noise_shape = None if self.noise_shape is None else [
            tf.shape(inputs)[i] if size is None else size for i, size in enumerate(self.noise_shape)]
        return tf.nn.experimental.stateless_dropout(inputs, rate=self.rate, noise_shape=noise_shape, seed=seed)
