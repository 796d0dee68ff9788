"""The reference layers (SEED.md "Layers") as Keras pieces.

Keras has Dense and Dropout; what it lacks is the reference conv-pool order
(pool *before* bias + activation, which matters for L2 pooling) and the
reference initialisation, whose standard deviation depends on the layer's
fan-out. Those two are the only custom parts.
"""
import math

import keras
from keras import ops


def reference_kernel_init(n_out: float, seed=None):
    """Weights ~ N(0, sqrt(1 / n_out)), as network3.py draws them."""
    return keras.initializers.RandomNormal(stddev=math.sqrt(1.0 / n_out), seed=seed)


def reference_bias_init(seed=None):
    """Biases ~ N(0, 1)."""
    return keras.initializers.RandomNormal(stddev=1.0, seed=seed)


@keras.saving.register_keras_serializable(package="mnist")
class ConvPool(keras.layers.Layer):
    """Convolution, then non-overlapping pooling, then bias + activation.

    pooling="max" takes the window maximum; pooling="l2" takes the square root
    of the sum of squares over the window (a 1e-12 floor keeps its gradient
    finite where the window is all zeros).
    """

    def __init__(self, filters, kernel_size=5, pool_size=2, pooling="max", activation="sigmoid",
                 strides=1, padding="valid", kernel_regularizer=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("max", "l2"):
            raise ValueError(f"pooling must be 'max' or 'l2', not {pooling!r}")
        self.filters, self.kernel_size, self.pool_size = filters, kernel_size, pool_size
        self.pooling, self.strides, self.padding, self.seed = pooling, strides, padding, seed
        self.activation = keras.activations.get(activation)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)

    def build(self, input_shape):
        n_out = self.filters * self.kernel_size ** 2 / self.pool_size ** 2
        self.kernel = self.add_weight(
            name="kernel", shape=(self.kernel_size, self.kernel_size, input_shape[-1], self.filters),
            initializer=reference_kernel_init(n_out, self.seed), regularizer=self.kernel_regularizer)
        self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=reference_bias_init(
            None if self.seed is None else self.seed + 1))

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
            size = size - self.kernel_size + 1 if self.padding == "valid" else size
            return (size + self.strides - 1) // self.strides // self.pool_size
        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "pool_size": self.pool_size, "pooling": self.pooling, "strides": self.strides,
                "padding": self.padding, "seed": self.seed,
                "activation": keras.activations.serialize(self.activation),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer)}
