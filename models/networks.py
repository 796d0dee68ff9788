"""Network specs as data, and the one function that turns a spec into a Keras model."""
from dataclasses import dataclass

import keras

from models.layers import ConvPool, reference_bias_init, reference_kernel_init

IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel_size: int = 5
    pool_size: int = 2
    pooling: str = "max"
    strides: int = 1
    padding: str = "valid"


@dataclass(frozen=True)
class Dense:
    units: int


@dataclass(frozen=True)
class Network:
    """Hidden layers, their activation, and the dropout on FC/softmax inputs."""
    hidden: tuple
    activation: str = "sigmoid"
    dropout: float = 0.0

    def describe(self) -> str:
        parts = [f"conv{l.filters}" + ("-l2pool" if l.pooling == "l2" else "") if isinstance(l, Conv)
                 else f"fc{l.units}" for l in self.hidden]
        text = "-".join(parts + ["softmax"]) + f" ({self.activation}"
        return text + (f", dropout {self.dropout:g})" if self.dropout else ")")


def build_network(network: Network, l2: float = 0.0, seed: int = 0, name: str = "net") -> keras.Model:
    """A Sequential model: images [N, 28, 28, 1] in [0, 1] -> probabilities [N, 10].

    l2 is the Keras coefficient (the caller divides the reference lambda by
    the batches per epoch); it applies to weights, never biases.
    """
    regularizer = keras.regularizers.L2(l2) if l2 else None
    layers = [keras.Input(IMAGE_SHAPE, name="images")]
    seeds = iter(range(seed * 1000, seed * 1000 + 1000, 2))
    flat = False
    for spec in network.hidden:
        if isinstance(spec, Conv):
            layers.append(ConvPool(spec.filters, spec.kernel_size, spec.pool_size, spec.pooling,
                                   network.activation, spec.strides, spec.padding, regularizer, seed=next(seeds)))
            continue
        if not flat:
            layers.append(keras.layers.Flatten())
            flat = True
        if network.dropout:
            layers.append(keras.layers.Dropout(network.dropout, seed=next(seeds)))
        s = next(seeds)
        layers.append(keras.layers.Dense(
            spec.units, activation=network.activation, kernel_initializer=reference_kernel_init(spec.units, s),
            bias_initializer=reference_bias_init(s + 1), kernel_regularizer=regularizer))
    if not flat:
        layers.append(keras.layers.Flatten())
    if network.dropout:
        layers.append(keras.layers.Dropout(network.dropout, seed=next(seeds)))
    layers.append(keras.layers.Dense(NUM_CLASSES, activation="softmax", kernel_initializer="zeros",
                                     kernel_regularizer=regularizer, name="probabilities"))
    return keras.Sequential(layers, name=name)
