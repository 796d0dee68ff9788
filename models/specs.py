"""Network specs as plain data: what each stage's network is, readable without loading Keras."""
from dataclasses import dataclass

from mnist_cnn_progression.inference.contract import IMAGE_SHAPE, NUM_CLASSES  # the specs' input and output


def convolved_size(size: int, kernel_size: int, strides: int = 1, padding: str = "valid") -> int:
    """The side of a convolution's output, before pooling, as Keras computes it for "valid" or "same" padding."""
    return (size - kernel_size) // strides + 1 if padding == "valid" else -(-size // strides)


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel_size: int = 5
    pool_size: int = 2
    pooling: str = "max"
    strides: int = 1
    padding: str = "valid"

    def convolved(self, size: int) -> int:
        return convolved_size(size, self.kernel_size, self.strides, self.padding)

    def describe(self) -> str:
        return f"conv{self.filters}" + ("-l2pool" if self.pooling == "l2" else "")


@dataclass(frozen=True)
class BNConv:
    """Convolution without bias, batch normalisation, activation, then 2x2 max pooling if pool_size is 2.

    Not in SEED.md: the modern block of An et al. 2020 (stage `beyond`).
    Batch normalisation makes the bias redundant, and "same" padding keeps
    the size, so that several convolutions can stack before a pooling.
    """
    filters: int
    kernel_size: int = 3
    padding: str = "same"
    pool_size: int = 1

    def convolved(self, size: int) -> int:
        return convolved_size(size, self.kernel_size, padding=self.padding)

    def describe(self) -> str:
        shape = f"{self.kernel_size}x{self.kernel_size}" + (" same" if self.padding == "same" else "")
        return f"bnconv{self.filters}({shape})" + ("-pool" if self.pool_size > 1 else "")


@dataclass(frozen=True)
class Dense:
    units: int

    def describe(self) -> str:
        return f"fc{self.units}"


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
            if isinstance(layer, (Conv, BNConv)):
                out = layer.convolved(size)
                total += out * out * layer.kernel_size ** 2 * channels * layer.filters
                size, channels = out // layer.pool_size, layer.filters
            else:
                total += (units or size * size * channels) * layer.units
                units = layer.units
        return total + (units or size * size * channels) * NUM_CLASSES

    def describe(self) -> str:
        text = "-".join([layer.describe() for layer in self.hidden] + ["softmax"]) + f" ({self.activation}"
        return text + (f", dropout {self.dropout:g})" if self.dropout else ")")
