"""Network specs as plain data: what each stage's network is, readable without loading Keras."""
from dataclasses import dataclass

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

    def multiply_accumulates(self) -> int:
        """Multiply-accumulates of one image's forward pass (convolutions and dense layers; the rest is minor)."""
        size, channels, total, units = IMAGE_SHAPE[0], IMAGE_SHAPE[2], 0, None
        for layer in self.hidden:
            if isinstance(layer, Conv):
                out = ((size - layer.kernel_size) // layer.strides + 1 if layer.padding == "valid"
                       else -(-size // layer.strides))
                total += out * out * layer.kernel_size ** 2 * channels * layer.filters
                size, channels = out // layer.pool_size, layer.filters
            else:
                total += (units or size * size * channels) * layer.units
                units = layer.units
        return total + (units or size * size * channels) * NUM_CLASSES

    def describe(self) -> str:
        parts = [f"conv{l.filters}" + ("-l2pool" if l.pooling == "l2" else "") if isinstance(l, Conv)
                 else f"fc{l.units}" for l in self.hidden]
        text = "-".join(parts + ["softmax"]) + f" ({self.activation}"
        return text + (f", dropout {self.dropout:g})" if self.dropout else ")")
