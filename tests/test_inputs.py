"""The training input's augmentation: shifts move pixels exactly, turns and zooms move ink where geometry says."""
import numpy as np
import tensorflow as tf

from mnist_cnn_progression.pipeline.inputs import Arrays, random_transform

SEED = tf.constant([3, 7], tf.int64)


def dot(y: int, x: int, copies: int = 1) -> np.ndarray:
    image = np.zeros((copies, 28, 28, 1), np.float32)
    image[:, y, x] = 1.0
    return image


def centre_of_ink(images: np.ndarray) -> np.ndarray:
    """(y, x) centre of mass per image."""
    grid = np.mgrid[0:28, 0:28].astype(np.float64)
    mass = images[..., 0].sum(axis=(1, 2))
    return np.stack([(images[..., 0] * g).sum(axis=(1, 2)) / mass for g in grid], axis=1)


def test_a_pure_shift_moves_every_pixel_value_exactly_and_fills_with_zeros():
    images = np.random.default_rng(0).random((64, 28, 28, 1)).astype(np.float32)
    shifted = random_transform(tf.constant(images), SEED, 2).numpy()
    offsets = tf.random.stateless_uniform([64, 2], SEED, -2, 3, dtype=tf.int32).numpy()
    assert len({tuple(o) for o in offsets}) > 10  # the offsets really vary per image
    for image, moved, (dy, dx) in zip(images[..., 0], shifted[..., 0], offsets):
        expected = np.zeros_like(image)
        rows, cols = slice(max(0, -dy), 28 - max(0, dy)), slice(max(0, -dx), 28 - max(0, dx))
        expected[rows, cols] = image[max(0, dy):28 - max(0, -dy), max(0, dx):28 - max(0, -dx)]
        np.testing.assert_array_equal(moved, expected)


def test_turns_stay_within_the_angle_and_keep_the_distance_from_the_centre():
    centre = 13.5
    images = dot(5, 13, copies=2000)  # 8.5 pixels above the centre, nearly on its column
    turned = random_transform(tf.constant(images), SEED, 0, max_rotation=15.0).numpy()
    y, x = centre_of_ink(turned).T
    radius = np.hypot(y - centre, x - centre)
    np.testing.assert_allclose(radius, np.hypot(8.5, 0.5), atol=0.35)
    angles = np.degrees(np.arctan2(x - centre, centre - y) - np.arctan2(-0.5, 8.5))
    assert np.abs(angles).max() <= 15.5 and angles.min() < -12 and angles.max() > 12  # both ways, up to the limit
    assert np.abs(angles).mean() > 5  # spread over the range, not bunched at zero


def test_zooms_scale_the_distance_from_the_centre_within_the_limit():
    centre = 13.5
    images = dot(5, 13, copies=2000)
    zoomed = random_transform(tf.constant(images), SEED, 0, max_zoom=0.2).numpy()
    y, x = centre_of_ink(zoomed).T
    scale = np.hypot(y - centre, x - centre) / np.hypot(8.5, 0.5)
    assert 0.77 < scale.min() < 0.84 and 1.16 < scale.max() < 1.23


def test_augmented_epochs_are_repeatable_and_differ_between_epochs():
    rng = np.random.default_rng(1)
    data = Arrays(rng.integers(0, 256, (64, 28, 28), dtype=np.uint8), rng.integers(0, 10, 64))
    epochs = lambda: [x.numpy() for x, _ in data.training(32, 1, 2, shuffle=False, seed=4, max_shift=1,
                                                           max_rotation=10.0, max_zoom=0.1)]
    first, again = epochs(), epochs()
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(first[0], first[2])  # the same images, another epoch: other turns


def test_the_shift_only_epochs_stop_turning_and_zooming_and_only_those():
    rng = np.random.default_rng(2)
    data = Arrays(rng.integers(1, 256, (32, 28, 28), dtype=np.uint8), rng.integers(0, 10, 32))
    batches = [x.numpy() for x, _ in data.training(32, 1, 3, shuffle=False, seed=4, max_shift=1, max_rotation=10.0,
                                                   max_zoom=0.1, shift_only_from=3)]
    source = np.append(data.images.numpy() / 255.0, 0.0).astype(np.float32)
    exact = [np.isin(batch, source).mean() for batch in batches]  # a whole-pixel shift keeps every value
    assert exact[2] == 1.0 and max(exact[:2]) < 0.5
