"""Expansion: exactly the reference one-pixel shifts, checked image by image against a loop like expand_mnist.py."""
import numpy as np

from mnist_cnn_progression.pipeline.expand import expand, shift
from mnist_cnn_progression.pipeline.sources import from_sample


def reference_expansion(images):
    """Nielsen's expand_mnist.py, per image: the image, then shifted up, down, left, right; zeros roll in."""
    out = []
    for image in images:
        out.append(image)
        for d, axis, index_position, index in [(1, 0, "first", 0), (-1, 0, "first", 27),
                                               (1, 1, "last", 0), (-1, 1, "last", 27)]:
            new = np.roll(image, d, axis)
            if index_position == "first":
                new[index, :] = 0
            else:
                new[:, index] = 0
            out.append(new)
    return np.array(out)


def test_every_expanded_image_is_a_reference_shift():
    sample = from_sample()
    images, labels = sample.train_images[:300], sample.train_labels[:300]
    expanded, expanded_labels = expand(images, labels, seed=7)
    reference = reference_expansion(images)
    assert expanded.shape == (1500, 28, 28) and expanded.dtype == np.uint8
    # Same multiset of (image, label) pairs: compare sorted byte strings.
    reference_labels = np.repeat(labels, 5)
    key = lambda x, y: sorted(a.tobytes() + bytes([b]) for a, b in zip(x, y))
    assert key(expanded, expanded_labels) == key(reference, reference_labels)


def test_shift_moves_content_and_zero_fills():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, 0, :] = 9  # top row
    image[0, :, 27] = 5  # right column
    down = shift(image, 1, 0)[0]
    assert not down[0].any() and down[1, :27].tolist() == [9] * 27
    left = shift(image, 0, -1)[0]
    assert not left[:, 27].any() and left[1:, 26].tolist() == [5] * 27


def test_expansion_is_deterministic_for_a_seed_and_shuffled():
    sample = from_sample()
    a = expand(sample.train_images[:100], sample.train_labels[:100], seed=1)
    b = expand(sample.train_images[:100], sample.train_labels[:100], seed=1)
    c = expand(sample.train_images[:100], sample.train_labels[:100], seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])
    assert not np.array_equal(a[1][:100], np.asarray(sample.train_labels[:100]))  # shuffled, not five blocks
