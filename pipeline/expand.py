"""Data expansion (SEED.md): every training image plus its four one-pixel shifts.

The reference expand_mnist.py loops image by image; here the 250,000 images
are five array slices and one permutation.
"""
import numpy as np

# (rows, columns) each copy moves the digit by: kept, up, down, left, right.
SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def shift(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Move every image by (rows, columns) pixels; what rolls in is zero (not wrapped)."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    src_r = slice(max(0, -rows), height - max(0, rows))
    dst_r = slice(max(0, rows), height - max(0, -rows))
    src_c = slice(max(0, -columns), width - max(0, columns))
    dst_c = slice(max(0, columns), width - max(0, -columns))
    out[:, dst_r, dst_c] = images[:, src_r, src_c]
    return out


def expand(images: np.ndarray, labels: np.ndarray, seed: int = 0):
    """The five copies of every image, shuffled once with a seeded permutation."""
    expanded = np.concatenate([shift(images, r, c) for r, c in SHIFTS])
    expanded_labels = np.tile(labels, len(SHIFTS))
    order = np.random.default_rng(seed).permutation(len(expanded))
    return expanded[order], expanded_labels[order]
