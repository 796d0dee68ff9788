"""What the hardware could do: multiply-accumulates per image of a network, and this machine's matmul peak."""
import time

import numpy as np


def count_macs(model) -> int:
    """Multiply-accumulates per image of the convolutions and dense layers (pooling and activations are minor)."""
    macs = 0
    for layer in model.layers:
        if hasattr(layer, "kernel_size") and hasattr(layer, "kernel"):  # ConvPool: every conv output position
            size = layer.input.shape[1]
            positions = ((size - layer.kernel_size) // layer.strides + 1 if layer.padding == "valid"
                         else -(-size // layer.strides)) ** 2
            macs += positions * int(np.prod(layer.kernel.shape))
        elif hasattr(layer, "kernel"):
            macs += int(np.prod(layer.kernel.shape))
    return macs


def matmul_flops(size: int = 2048, repeats: int = 5) -> float:
    """The best float32 matrix-product speed of NumPy's BLAS here, in FLOP/s: the practical peak."""
    a = np.random.default_rng(0).random((size, size), dtype=np.float32)
    a @ a
    best = min(timed(lambda: a @ a) for _ in range(repeats))
    return 2 * size ** 3 / best


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
